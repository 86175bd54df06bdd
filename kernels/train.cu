// Training kernels: fused bias + activation (forward and backward), fused softmax
// cross-entropy, inverted dropout, and the SGD / Adam updates over a parameter's values
// (a sparse weight's live values, or a dense one's). The same rules as the CPU code in
// src/autograd and src/optim.
//
// Layout: activations are feature-major [features × batch] row-major, as on the CPU.

typedef unsigned int u32;

// activation codes (src/cuda/train.rs: act_code)
#define ACT_IDENTITY 0
#define ACT_RELU 1
#define ACT_LEAKY 2
#define ACT_TANH 3
#define ACT_SIGMOID 4

__device__ __forceinline__ float act_f(int act, float slope, float x) {
    switch (act) {
        case ACT_RELU: return fmaxf(x, 0.0f);
        case ACT_LEAKY: return x > 0.0f ? x : slope * x;
        case ACT_TANH: return tanhf(x);
        case ACT_SIGMOID: return 1.0f / (1.0f + expf(-x));
        default: return x;
    }
}

// derivative at the input whose output is y
__device__ __forceinline__ float act_d(int act, float slope, float y) {
    switch (act) {
        case ACT_RELU: return y > 0.0f ? 1.0f : 0.0f;
        case ACT_LEAKY: return y > 0.0f ? 1.0f : slope;
        case ACT_TANH: return 1.0f - y * y;
        case ACT_SIGMOID: return y * (1.0f - y);
        default: return 1.0f;
    }
}

// y[r, j] = act(x[r, j] + bias[r]); grid-stride over rows·n
extern "C" __global__ void bias_act_f32(u32 rows, u32 n, const float* __restrict__ x,
                                        const float* __restrict__ bias, int act, float slope,
                                        float* __restrict__ y) {
    const size_t total = (size_t)rows * n;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        y[i] = act_f(act, slope, x[i] + bias[i / n]);
    }
}

// g[r, j] *= act'(y[r, j]); db[r] += Σ_j g[r, j]. One block per row, blockDim 256.
extern "C" __global__ void bias_act_backward_f32(u32 rows, u32 n, float* __restrict__ g,
                                                 const float* __restrict__ y, int act,
                                                 float slope, float* __restrict__ db) {
    __shared__ float partial[256];
    const u32 r = blockIdx.x;
    if (r >= rows) return;
    float sum = 0.0f;
    for (u32 j = threadIdx.x; j < n; j += blockDim.x) {
        const size_t i = (size_t)r * n + j;
        const float v = g[i] * act_d(act, slope, y[i]);
        g[i] = v;
        sum += v;
    }
    partial[threadIdx.x] = sum;
    __syncthreads();
    for (u32 s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) db[r] += partial[0];
}

// softmax and cross-entropy of column j (see softmax_ce_f32)
__device__ __forceinline__ void softmax_ce_column(u32 classes, u32 n,
                                                  const float* __restrict__ logits,
                                                  const u32* __restrict__ labels,
                                                  float* __restrict__ probs,
                                                  float* __restrict__ loss, u32 j) {
    float mx = -__int_as_float(0x7f800000);  // −∞ (no <math.h> under NVRTC)
    for (u32 c = 0; c < classes; ++c) mx = fmaxf(mx, logits[(size_t)c * n + j]);
    float sum = 0.0f;
    for (u32 c = 0; c < classes; ++c) {
        const float e = expf(logits[(size_t)c * n + j] - mx);
        probs[(size_t)c * n + j] = e;
        sum += e;
    }
    for (u32 c = 0; c < classes; ++c) probs[(size_t)c * n + j] /= sum;
    const u32 l = labels[j];
    loss[j] = -(logits[(size_t)l * n + j] - mx - logf(sum));
}

// For each column j: probs[:, j] = softmax(logits[:, j]); loss[j] = −log probs[label_j, j]
// (as (x − max) − log Σ e^(x − max), the CPU's stable form). One thread per column,
// grid-stride.
extern "C" __global__ void softmax_ce_f32(u32 classes, u32 n, const float* __restrict__ logits,
                                          const u32* __restrict__ labels,
                                          float* __restrict__ probs, float* __restrict__ loss) {
    for (u32 j = blockIdx.x * blockDim.x + threadIdx.x; j < n; j += gridDim.x * blockDim.x)
        softmax_ce_column(classes, n, logits, labels, probs, loss, j);
}

// dx[c, j] = (probs[c, j] − [c == label_j]) · scale (scale = 1 / batch)
extern "C" __global__ void softmax_ce_backward_f32(u32 classes, u32 n,
                                                   const float* __restrict__ probs,
                                                   const u32* __restrict__ labels, float scale,
                                                   float* __restrict__ dx) {
    const size_t total = (size_t)classes * n;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const u32 c = i / n, j = i % n;
        dx[i] = (probs[i] - (labels[j] == c ? 1.0f : 0.0f)) * scale;
    }
}

// Counter-based uniform in [0, 1): a 32-bit mix of (seed, index) (splitmix-style).
__device__ __forceinline__ float uniform01(unsigned long long seed, unsigned long long i) {
    unsigned long long z = seed + (i + 1) * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (float)(z >> 40) * (1.0f / 16777216.0f);
}

// Inverted dropout: mask = 0 with probability p, else 1/(1−p); y = x·mask.
extern "C" __global__ void dropout_f32(u32 len, const float* __restrict__ x,
                                       float* __restrict__ mask, float* __restrict__ y, float p,
                                       unsigned long long seed) {
    const float scale = 1.0f / (1.0f - p);
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < len;
         i += (size_t)gridDim.x * blockDim.x) {
        const float m = uniform01(seed, i) < p ? 0.0f : scale;
        mask[i] = m;
        y[i] = x[i] * m;
    }
}

// a[i] *= b[i]
extern "C" __global__ void mul_f32(u32 len, float* __restrict__ a, const float* __restrict__ b) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < len;
         i += (size_t)gridDim.x * blockDim.x)
        a[i] *= b[i];
}

// SGD as torch.optim.SGD without dampening: d = g + wd·w; with momentum (buf non-null,
// starting at zero, so the first step gives buf = d) buf = momentum·buf + d and
// d = nesterov ? d + momentum·buf : buf; w −= lr·d.
extern "C" __global__ void sgd_f32(u32 len, float* __restrict__ w, const float* __restrict__ g,
                                   float* __restrict__ buf, float lr, float wd, float momentum,
                                   int nesterov) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < len;
         i += (size_t)gridDim.x * blockDim.x) {
        float d = g[i] + wd * w[i];
        if (buf) {
            const float b = momentum * buf[i] + d;
            buf[i] = b;
            d = nesterov ? d + momentum * b : b;
        }
        w[i] -= lr * d;
    }
}

// Adam / AdamW as PyTorch: d = g + l2·w; m = β1·m + (1−β1)·d; v = β2·v + (1−β2)·d²;
// w = w·shrink − step_size·m / (√v / bc2_sqrt + eps).
extern "C" __global__ void adam_f32(u32 len, float* __restrict__ w, const float* __restrict__ g,
                                    float* __restrict__ m, float* __restrict__ v, float beta1,
                                    float beta2, float eps, float l2, float shrink,
                                    float step_size, float bc2_sqrt) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < len;
         i += (size_t)gridDim.x * blockDim.x) {
        const float d = g[i] + l2 * w[i];
        const float mi = beta1 * m[i] + (1.0f - beta1) * d;
        const float vi = beta2 * v[i] + (1.0f - beta2) * d * d;
        m[i] = mi;
        v[i] = vi;
        w[i] = w[i] * shrink - step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
    }
}
