// Convolution-network kernels: im2col and its gradient (col2im), max and average pooling
// (forward and backward), batch normalisation (forward, backward, running statistics).
// The same rules and, where it decides the rounding, the same order of operations as the
// CPU code in src/autograd/conv.rs and Cnn::normalise in src/nn/cnn.rs. Every kernel is
// written in gather form (each output element sums its own contributions): no atomics,
// so results do not depend on scheduling.
//
// Layout: an image batch is feature-major [C][H][W][B] row-major (B, the batch, is
// contiguous), as on the CPU. The im2col matrix of a kh×kw convolution is
// [C·kh·kw][OH·OW·B]: row r = (c·kh + i)·kw + j holds, at column (oy·OW + ox)·B + b, the
// input pixel (c, oy·stride + i − pad, ox·stride + j − pad) of sample b, or 0 where that
// lies in the padding. A pooled image is [C][OH][OW][B]. Batch norm works on the rows of
// a [channels × n] matrix (n = OH·OW·B: one channel's values over positions and batch).
//
// Elementwise steps that the CPU rounds twice (a product, then a sum) use __fmul_rn /
// __fadd_rn, which NVRTC never contracts into one fused multiply-add.

typedef unsigned int u32;

// The geometry of a convolution or pooling window (src/cuda/cnn.rs: KernelGeom). Pooling
// has kh = kw = k and pad = 0.
struct Geom {
    u32 channels, h, w;  // input image
    u32 kh, kw;          // window
    u32 stride, pad;
    u32 batch;           // B
    u32 oh, ow;          // output image
};

#define GRID_STRIDE(i, total)                                                       \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (total); \
         i += (size_t)gridDim.x * blockDim.x)

// A flat index into a row-major [rows][h][w][batch] array, split.
struct Idx {
    size_t row;
    u32 y, x, b;
};

__device__ __forceinline__ Idx split_index(size_t e, u32 h, u32 w, u32 batch) {
    Idx p;
    p.b = e % batch;
    e /= batch;
    p.x = e % w;
    e /= w;
    p.y = e % h;
    p.row = e / h;
    return p;
}

// col[r][oy][ox][b] = x[c][oy·s + i − pad][ox·s + j − pad][b] (0 in the padding),
// r = (c·kh + i)·kw + j. One thread per element of col, grid-stride.
extern "C" __global__ void im2col_f32(Geom g, const float* __restrict__ x,
                                      float* __restrict__ col) {
    const size_t total = (size_t)g.channels * g.kh * g.kw * g.oh * g.ow * g.batch;
    GRID_STRIDE(e, total) {
        const Idx o = split_index(e, g.oh, g.ow, g.batch);  // o.row = r
        const u32 j = o.row % g.kw, i = (o.row / g.kw) % g.kh;
        const size_t c = o.row / ((size_t)g.kw * g.kh);
        const int iy = (int)(o.y * g.stride + i) - (int)g.pad;
        const int ix = (int)(o.x * g.stride + j) - (int)g.pad;
        float v = 0.0f;
        if (iy >= 0 && ix >= 0 && iy < (int)g.h && ix < (int)g.w)
            v = x[((c * g.h + iy) * g.w + ix) * g.batch + o.b];
        col[e] = v;
    }
}

// The gradient of im2col: dx[c][iy][ix][b] = Σ dcol[r][oy][ox][b] over the (i, j) whose
// window position (oy, ox) reads pixel (iy, ix), in (i, j) order from 0, as the CPU adds
// them. One thread per input element, grid-stride; dx is overwritten.
extern "C" __global__ void col2im_f32(Geom g, const float* __restrict__ dcol,
                                      float* __restrict__ dx) {
    const size_t total = (size_t)g.channels * g.h * g.w * g.batch;
    GRID_STRIDE(e, total) {
        const Idx p = split_index(e, g.h, g.w, g.batch);  // p.row = c
        const size_t c = p.row;
        const int iy = p.y, ix = p.x;
        const u32 b = p.b;
        float sum = 0.0f;
        for (u32 i = 0; i < g.kh; ++i) {
            const int ty = iy + (int)g.pad - (int)i;  // = oy·stride
            if (ty < 0 || ty % (int)g.stride != 0) continue;
            const u32 oy = ty / (int)g.stride;
            if (oy >= g.oh) continue;
            for (u32 j = 0; j < g.kw; ++j) {
                const int tx = ix + (int)g.pad - (int)j;  // = ox·stride
                if (tx < 0 || tx % (int)g.stride != 0) continue;
                const u32 ox = tx / (int)g.stride;
                if (ox >= g.ow) continue;
                const size_t r = (c * g.kh + i) * g.kw + j;
                sum += dcol[((r * g.oh + oy) * g.ow + ox) * g.batch + b];
            }
        }
        dx[e] = sum;
    }
}

// Splits the flat index e of a pooled image [C][OH][OW][B] and returns the flat index of
// the window's top-left input pixel.
__device__ __forceinline__ size_t pool_window(const Geom& g, size_t e) {
    const Idx o = split_index(e, g.oh, g.ow, g.batch);  // o.row = c
    return ((o.row * g.h + (size_t)o.y * g.stride) * g.w + (size_t)o.x * g.stride) * g.batch +
           o.b;
}

// y = the maximum of each k×k window (k = kh), arg = its offset i·k + j in the window; the
// first maximum in (i, j) order wins, as on the CPU. One thread per output, grid-stride.
extern "C" __global__ void maxpool_f32(Geom g, const float* __restrict__ x,
                                       float* __restrict__ y, u32* __restrict__ arg) {
    const size_t total = (size_t)g.channels * g.oh * g.ow * g.batch;
    const u32 k = g.kh;
    GRID_STRIDE(e, total) {
        const size_t at = pool_window(g, e);
        float best = x[at];
        u32 pos = 0;
        for (u32 i = 0; i < k; ++i) {
            for (u32 j = 0; j < k; ++j) {
                const float v = x[at + ((size_t)i * g.w + j) * g.batch];
                if (v > best) {
                    best = v;
                    pos = i * k + j;
                }
            }
        }
        y[e] = best;
        arg[e] = pos;
    }
}

// y = the mean of each k×k window: the sum in (i, j) order, then times 1/k², as the CPU.
extern "C" __global__ void avgpool_f32(Geom g, const float* __restrict__ x,
                                       float* __restrict__ y) {
    const size_t total = (size_t)g.channels * g.oh * g.ow * g.batch;
    const u32 k = g.kh;
    const float inv = 1.0f / (float)(k * k);
    GRID_STRIDE(e, total) {
        const size_t at = pool_window(g, e);
        float sum = x[at];
        for (u32 i = 0; i < k; ++i) {
            for (u32 j = 0; j < k; ++j) {
                if (i == 0 && j == 0) continue;
                sum += x[at + ((size_t)i * g.w + j) * g.batch];
            }
        }
        y[e] = sum * inv;
    }
}

// The windows (oy, ox) of a pooling layer that contain input pixel (iy, ix): oy from
// oy0 to oy1 inclusive (oy0 > oy1: none), likewise ox.
struct Windows {
    u32 oy0, oy1, ox0, ox1;
};

__device__ __forceinline__ Windows windows_of(const Geom& g, u32 iy, u32 ix) {
    const u32 k = g.kh, s = g.stride;
    Windows w;
    // oy·s ≤ iy < oy·s + k  ⇔  (iy − k + 1)/s ≤ oy ≤ iy/s
    w.oy0 = iy + 1 >= k ? (iy + 1 - k + s - 1) / s : 0;
    w.ox0 = ix + 1 >= k ? (ix + 1 - k + s - 1) / s : 0;
    w.oy1 = min(iy / s, g.oh - 1);
    w.ox1 = min(ix / s, g.ow - 1);
    return w;
}

// The gradient of pooling, gathered: dx[c][iy][ix][b] (overwritten) = the sum over the
// windows (oy, ox) that contain the pixel, in (oy, ox) order as the CPU adds them, of
// MAX ? (dy if the window's maximum was this pixel, by arg) : dy·(1/k²).
// One thread per input element, grid-stride.
template <bool MAX>
__device__ __forceinline__ void pool_backward(const Geom& g, const float* __restrict__ dy,
                                              const u32* __restrict__ arg,
                                              float* __restrict__ dx) {
    const size_t total = (size_t)g.channels * g.h * g.w * g.batch;
    const u32 k = g.kh;
    const float inv = 1.0f / (float)(k * k);
    GRID_STRIDE(e, total) {
        const Idx p = split_index(e, g.h, g.w, g.batch);  // p.row = c
        const Windows w = windows_of(g, p.y, p.x);
        float sum = 0.0f;
        for (u32 oy = w.oy0; oy <= w.oy1; ++oy) {
            for (u32 ox = w.ox0; ox <= w.ox1; ++ox) {
                const size_t o = ((p.row * g.oh + oy) * g.ow + ox) * g.batch + p.b;
                if (MAX) {
                    if (arg[o] == (p.y - oy * g.stride) * k + (p.x - ox * g.stride)) sum += dy[o];
                } else {
                    sum += __fmul_rn(dy[o], inv);
                }
            }
        }
        dx[e] = sum;
    }
}

// Max pooling's gradient, routed by the forward's arg.
extern "C" __global__ void maxpool_backward_f32(Geom g, const float* __restrict__ dy,
                                                const u32* __restrict__ arg,
                                                float* __restrict__ dx) {
    pool_backward<true>(g, dy, arg, dx);
}

// Average pooling's gradient.
extern "C" __global__ void avgpool_backward_f32(Geom g, const float* __restrict__ dy,
                                                float* __restrict__ dx) {
    pool_backward<false>(g, dy, nullptr, dx);
}

// Sum of v over the block (blockDim.x = 256), returned to every thread.
__device__ __forceinline__ double block_sum(double v, double* partial) {
    partial[threadIdx.x] = v;
    __syncthreads();
    for (u32 s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
        __syncthreads();
    }
    const double total = partial[0];
    __syncthreads();  // partial is reused by the next call
    return total;
}

// Batch norm of row r of x [rows × n]: with train ≠ 0 the row's mean and biased variance
// (summed in double, as the CPU's f64) are written to mean[r], var[r]; otherwise they are
// read from there (the running statistics). inv_std[r] = 1/√(var + eps),
// xhat = (x − mean)·inv_std, y = gamma[r]·xhat + beta[r].
// One block of 256 threads per row: grid (rows), block (256).
extern "C" __global__ void batch_norm_f32(u32 rows, u32 n, const float* __restrict__ x,
                                          const float* __restrict__ gamma,
                                          const float* __restrict__ beta, float eps, int train,
                                          float* __restrict__ mean, float* __restrict__ var,
                                          float* __restrict__ inv_std,
                                          float* __restrict__ xhat, float* __restrict__ y) {
    __shared__ double partial[256];
    __shared__ float stats[2];  // mean, 1/√(var + eps)
    const u32 r = blockIdx.x;
    if (r >= rows) return;
    const float* xr = x + (size_t)r * n;
    if (train) {
        double s = 0.0;
        for (u32 j = threadIdx.x; j < n; j += blockDim.x) s += (double)xr[j];
        const double m = block_sum(s, partial) / (double)n;
        double q = 0.0;
        for (u32 j = threadIdx.x; j < n; j += blockDim.x) {
            const double d = (double)xr[j] - m;
            q += d * d;
        }
        const double v = block_sum(q, partial) / (double)n;
        if (threadIdx.x == 0) {
            mean[r] = (float)m;
            var[r] = (float)v;
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        const float inv = 1.0f / sqrtf(var[r] + eps);
        inv_std[r] = inv;
        stats[0] = mean[r];
        stats[1] = inv;
    }
    __syncthreads();
    const float m = stats[0], inv = stats[1], gr = gamma[r], br = beta[r];
    for (u32 j = threadIdx.x; j < n; j += blockDim.x) {
        const size_t i = (size_t)r * n + j;
        const float h = (x[i] - m) * inv;
        xhat[i] = h;
        y[i] = __fadd_rn(__fmul_rn(gr, h), br);
    }
}

// Batch-norm backward for row r, from the gradient g at y and the forward's xhat and
// inv_std: dgamma[r] = Σ g·xhat, dbeta[r] = Σ g (both overwritten) and
// dx = gamma·inv_std·(g − (Σ g + xhat·Σ g·xhat)/n) with batch statistics (train ≠ 0), or
// gamma·inv_std·g with running ones. g and dx must not overlap. The two sums are taken in
// double, not in the CPU's f32 order (src/autograd/conv.rs), so they agree with the CPU
// within rounding rather than bit for bit; the elementwise step is rounded as on the CPU.
// One block of 256 threads per row: grid (rows), block (256).
extern "C" __global__ void batch_norm_backward_f32(
    u32 rows, u32 n, const float* __restrict__ g, const float* __restrict__ xhat,
    const float* __restrict__ gamma, const float* __restrict__ inv_std, int train,
    float* __restrict__ dgamma, float* __restrict__ dbeta, float* __restrict__ dx) {
    __shared__ double partial[256];
    const u32 r = blockIdx.x;
    if (r >= rows) return;
    const float* gr = g + (size_t)r * n;
    const float* hr = xhat + (size_t)r * n;
    double s = 0.0, sh = 0.0;
    for (u32 j = threadIdx.x; j < n; j += blockDim.x) {
        s += (double)gr[j];
        sh += (double)gr[j] * (double)hr[j];
    }
    const float sg = (float)block_sum(s, partial);
    const float sgh = (float)block_sum(sh, partial);
    if (threadIdx.x == 0) {
        dgamma[r] = sgh;
        dbeta[r] = sg;
    }
    const float scale = gamma[r] * inv_std[r];
    const float inv_n = 1.0f / (float)(n > 0 ? n : 1);
    float* dr = dx + (size_t)r * n;
    for (u32 j = threadIdx.x; j < n; j += blockDim.x) {
        const float v = train ? __fsub_rn(gr[j], __fmul_rn(inv_n, __fadd_rn(sg, __fmul_rn(hr[j], sgh))))
                              : gr[j];
        dr[j] = __fmul_rn(scale, v);
    }
}

// The running statistics after a training step (Cnn::normalise):
// running_mean += momentum·(mean − running_mean),
// running_var += momentum·(var·unbias − running_var), unbias = n/(n − 1).
// One thread per channel, grid-stride.
extern "C" __global__ void batch_norm_running_f32(u32 rows, const float* __restrict__ mean,
                                                  const float* __restrict__ var, float momentum,
                                                  float unbias,
                                                  float* __restrict__ running_mean,
                                                  float* __restrict__ running_var) {
    GRID_STRIDE(r, (size_t)rows) {
        const float rm = running_mean[r], rv = running_var[r];
        running_mean[r] = __fadd_rn(rm, __fmul_rn(momentum, mean[r] - rm));
        running_var[r] = __fadd_rn(rv, __fmul_rn(momentum, __fmul_rn(var[r], unbias) - rv));
    }
}
