// Sparse kernels: CSR SpMM (also on the transposed pattern), SDDMM and BSR SpMM.
//
// Layout: every dense matrix is row-major with N (the batch, or batch·H·W for a
// convolution) contiguous, as on the CPU. A CSR pattern is row_ptr (M+1) and col_idx
// (nnz) as u32; `order` lists the rows by decreasing length, so that blocks scheduled
// together do similar work (Sputnik's row swizzle).
//
// Entry points are extern "C" <op>_<dtype>[_<variant>]; templates stamp them out.

typedef unsigned int u32;

#define FULL_MASK 0xffffffffu

// ---------------------------------------------------------------------------------------
// CSR SpMM: C[M×N] = alpha·A·B + beta·C  (beta = 0: C is not read)
//
// A warp computes 32·VEC consecutive columns of one row: each lane owns VEC columns
// (VEC = 4: one float4 load of B per live entry). The row's (column, value) pairs are
// loaded 32 at a time, one per lane, and broadcast with shuffles, so each is read from
// memory once per warp. With `perm` non-null, entry q's value is values[perm[q]]: the
// transposed pattern's SpMM (Aᵀ·B) without a transposed copy of the values.
// grid: (ceil(M / WARPS), ceil(N / (32·VEC))), block: (32, WARPS)
// ---------------------------------------------------------------------------------------
template <int VEC>
__device__ __forceinline__ void spmm_row(const u32* __restrict__ row_ptr,
                                         const u32* __restrict__ col_idx,
                                         const float* __restrict__ values,
                                         const u32* __restrict__ perm,
                                         const float* __restrict__ b, float* __restrict__ c,
                                         u32 row, u32 n, float alpha, float beta) {
    const u32 lane = threadIdx.x;
    const u32 j = (blockIdx.y * 32 + lane) * VEC;
    const u32 start = row_ptr[row], end = row_ptr[row + 1];
    float acc[VEC];
#pragma unroll
    for (int v = 0; v < VEC; ++v) acc[v] = 0.0f;
    for (u32 p0 = start; p0 < end; p0 += 32) {
        const u32 p = p0 + lane;
        u32 col = 0;
        float val = 0.0f;
        if (p < end) {
            col = col_idx[p];
            val = values[perm ? perm[p] : p];
        }
        const u32 count = min(32u, end - p0);
        for (u32 t = 0; t < count; ++t) {
            const u32 k = __shfl_sync(FULL_MASK, col, t);
            const float a = __shfl_sync(FULL_MASK, val, t);
            if (VEC == 4) {
                if (j + 3 < n) {
                    const float4 bv = __ldg(reinterpret_cast<const float4*>(b + (size_t)k * n + j));
                    acc[0] += a * bv.x;
                    acc[1] += a * bv.y;
                    acc[2] += a * bv.z;
                    acc[3] += a * bv.w;
                }
            } else {
#pragma unroll
                for (int v = 0; v < VEC; ++v)
                    if (j + v < n) acc[v] += a * __ldg(b + (size_t)k * n + j + v);
            }
        }
    }
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
        if (j + v < n) {
            float* dst = c + (size_t)row * n + j + v;
            *dst = beta == 0.0f ? alpha * acc[v] : alpha * acc[v] + beta * *dst;
        }
    }
}

template <int VEC>
__device__ __forceinline__ void spmm_csr(u32 m, u32 n, const u32* __restrict__ row_ptr,
                                         const u32* __restrict__ col_idx,
                                         const float* __restrict__ values,
                                         const u32* __restrict__ perm,
                                         const u32* __restrict__ order,
                                         const float* __restrict__ b, float* __restrict__ c,
                                         float alpha, float beta) {
    const u32 slot = blockIdx.x * blockDim.y + threadIdx.y;
    if (slot >= m) return;  // whole warp leaves together
    const u32 row = order ? order[slot] : slot;
    spmm_row<VEC>(row_ptr, col_idx, values, perm, b, c, row, n, alpha, beta);
}

extern "C" __global__ void spmm_csr_f32_vec4(u32 m, u32 n, const u32* row_ptr,
                                             const u32* col_idx, const float* values,
                                             const u32* perm, const u32* order,
                                             const float* b, float* c, float alpha,
                                             float beta) {
    spmm_csr<4>(m, n, row_ptr, col_idx, values, perm, order, b, c, alpha, beta);
}

extern "C" __global__ void spmm_csr_f32_vec1(u32 m, u32 n, const u32* row_ptr,
                                             const u32* col_idx, const float* values,
                                             const u32* perm, const u32* order,
                                             const float* b, float* c, float alpha,
                                             float beta) {
    spmm_csr<1>(m, n, row_ptr, col_idx, values, perm, order, b, c, alpha, beta);
}

// ---------------------------------------------------------------------------------------
// SDDMM: out[p] = alpha·⟨L[row(p), :], R[col(p), :]⟩ + beta·out[p] for every live p.
//
// A warp takes one row and walks its entries; for each, the lanes split N (float4 loads
// where N allows) and the partial sums are reduced with shuffles. The row of L is read
// once per entry but stays in L1.
// grid: ceil(M / WARPS), block: (32, WARPS)
// ---------------------------------------------------------------------------------------
template <int VEC>
__device__ __forceinline__ void sddmm_csr(u32 m, u32 n, const u32* __restrict__ row_ptr,
                                          const u32* __restrict__ col_idx,
                                          const u32* __restrict__ order,
                                          const float* __restrict__ l,
                                          const float* __restrict__ r, float* __restrict__ out,
                                          float alpha, float beta) {
    const u32 slot = blockIdx.x * blockDim.y + threadIdx.y;
    if (slot >= m) return;
    const u32 row = order ? order[slot] : slot;
    const u32 lane = threadIdx.x;
    const float* lrow = l + (size_t)row * n;
    for (u32 p = row_ptr[row]; p < row_ptr[row + 1]; ++p) {
        const float* rrow = r + (size_t)col_idx[p] * n;
        float sum = 0.0f;
        if (VEC == 4) {
            for (u32 j = lane * 4; j + 3 < n; j += 128) {
                const float4 a = __ldg(reinterpret_cast<const float4*>(lrow + j));
                const float4 bv = __ldg(reinterpret_cast<const float4*>(rrow + j));
                sum += a.x * bv.x + a.y * bv.y + a.z * bv.z + a.w * bv.w;
            }
        } else {
            for (u32 j = lane; j < n; j += 32) sum += __ldg(lrow + j) * __ldg(rrow + j);
        }
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(FULL_MASK, sum, off);
        if (lane == 0) out[p] = beta == 0.0f ? alpha * sum : alpha * sum + beta * out[p];
    }
}

extern "C" __global__ void sddmm_csr_f32_vec4(u32 m, u32 n, const u32* row_ptr,
                                              const u32* col_idx, const u32* order,
                                              const float* l, const float* r, float* out,
                                              float alpha, float beta) {
    sddmm_csr<4>(m, n, row_ptr, col_idx, order, l, r, out, alpha, beta);
}

extern "C" __global__ void sddmm_csr_f32_vec1(u32 m, u32 n, const u32* row_ptr,
                                              const u32* col_idx, const u32* order,
                                              const float* l, const float* r, float* out,
                                              float alpha, float beta) {
    sddmm_csr<1>(m, n, row_ptr, col_idx, order, l, r, out, alpha, beta);
}

// ---------------------------------------------------------------------------------------
// BSR SpMM: C[M×N] = alpha·A·B + beta·C, A in BS×BS blocks (values block after block,
// each block row-major), block pattern in CSR form.
//
// A thread block computes one block row (BS rows) × 128 columns: thread (x, y) owns
// rows y, y + ROWS_STEP, ... and columns 4x .. 4x+3 of the tile. For each stored block
// the BS×BS values and the BS×128 slab of B are staged in shared memory, then every
// thread does BS multiply-adds per owned element: a small dense GEMM per block.
// grid: (block rows, ceil(N / 128)), block: (32, min(BS, 8))
// ---------------------------------------------------------------------------------------
template <int BS>
__device__ __forceinline__ void bsr_spmm(u32 n, const u32* __restrict__ brow_ptr,
                                         const u32* __restrict__ bcol_idx,
                                         const float* __restrict__ values,
                                         const float* __restrict__ b, float* __restrict__ c,
                                         float alpha, float beta) {
    constexpr int TILE = 128;
    constexpr int ROWS_STEP = BS < 8 ? BS : 8;
    constexpr int PER = BS / ROWS_STEP;
    __shared__ float sa[BS * BS];
    __shared__ __align__(16) float sb[BS * TILE];
    const u32 br = blockIdx.x;
    const u32 x = threadIdx.x, y = threadIdx.y;
    const u32 j0 = blockIdx.y * TILE;
    const u32 tid = y * 32 + x, threads = 32 * ROWS_STEP;
    float acc[PER][4];
#pragma unroll
    for (int r = 0; r < PER; ++r)
#pragma unroll
        for (int v = 0; v < 4; ++v) acc[r][v] = 0.0f;
    for (u32 q = brow_ptr[br]; q < brow_ptr[br + 1]; ++q) {
        const u32 kb = bcol_idx[q];
        __syncthreads();
        for (u32 t = tid; t < BS * BS; t += threads) sa[t] = values[(size_t)q * BS * BS + t];
        for (u32 t = tid; t < BS * TILE; t += threads) {
            const u32 rr = t / TILE, jj = j0 + t % TILE;
            sb[t] = jj < n ? __ldg(b + (size_t)(kb * BS + rr) * n + jj) : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < BS; ++kk) {
            const float4 bv = *reinterpret_cast<const float4*>(sb + kk * TILE + 4 * x);
#pragma unroll
            for (int r = 0; r < PER; ++r) {
                const float a = sa[(y + r * ROWS_STEP) * BS + kk];
                acc[r][0] += a * bv.x;
                acc[r][1] += a * bv.y;
                acc[r][2] += a * bv.z;
                acc[r][3] += a * bv.w;
            }
        }
    }
#pragma unroll
    for (int r = 0; r < PER; ++r) {
        const u32 row = br * BS + y + r * ROWS_STEP;
#pragma unroll
        for (int v = 0; v < 4; ++v) {
            const u32 j = j0 + 4 * x + v;
            if (j < n) {
                float* dst = c + (size_t)row * n + j;
                *dst = beta == 0.0f ? alpha * acc[r][v] : alpha * acc[r][v] + beta * *dst;
            }
        }
    }
}

#define BSR_ENTRY(BS)                                                                     \
    extern "C" __global__ void bsr_spmm_f32_b##BS(u32 n, const u32* brow_ptr,            \
                                                  const u32* bcol_idx, const float* values, \
                                                  const float* b, float* c, float alpha,  \
                                                  float beta) {                           \
        bsr_spmm<BS>(n, brow_ptr, bcol_idx, values, b, c, alpha, beta);                   \
    }

BSR_ENTRY(4)
BSR_ENTRY(8)
BSR_ENTRY(16)
