// RigL's grow choice on the device: the k largest |dense gradient| among the positions
// of a layer that are not live, by radix selection on 32-bit keys.
//
// Keys: key = 1 + bits(|g|) for a candidate (the bits of a non-negative float order as
// the float does), key = 0 for a position that stays live, so that a live position is
// never among the k largest while k ≤ the number of candidates. The host walks the four
// bytes of the key from the top (radix_hist_u32 gives one byte's histogram among the
// keys that share the bytes already fixed), which yields the k-th largest key T and how
// many of the keys equal to T to take; select_collect_u32 then gathers the positions
// above T and those equal to T (the host takes the lowest of these, the CPU's tie rule).
//
// Positions are row-major indices i·ncols + j into the out × in gradient, below 2³².

typedef unsigned int u32;
typedef unsigned long long u64;

// keys[i] = 1 + bits(|g[i]|); grid-stride
extern "C" __global__ void rigl_keys_f32(u64 len, const float* __restrict__ g,
                                         u32* __restrict__ keys) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < len;
         i += (u64)gridDim.x * blockDim.x) {
        keys[i] = (__float_as_uint(g[i]) & 0x7fffffffu) + 1u;
    }
}

// keys of the entries that stay live (keep[p] != 0) set to 0; one block per row
extern "C" __global__ void rigl_mask_live_u32(u32 nrows, u32 ncols,
                                              const u32* __restrict__ row_ptr,
                                              const u32* __restrict__ col_idx,
                                              const u32* __restrict__ keep,
                                              u32* __restrict__ keys) {
    for (u32 row = blockIdx.x; row < nrows; row += gridDim.x) {
        for (u32 p = row_ptr[row] + threadIdx.x; p < row_ptr[row + 1]; p += blockDim.x) {
            if (keep[p]) keys[(u64)row * ncols + col_idx[p]] = 0u;
        }
    }
}

// hist[b] += #{i : (keys[i] & mask) == prefix and byte (keys[i] >> shift) & 255 == b}
extern "C" __global__ void radix_hist_u32(u64 len, const u32* __restrict__ keys, u32 prefix,
                                          u32 mask, u32 shift, u32* __restrict__ hist) {
    __shared__ u32 local[256];
    for (u32 b = threadIdx.x; b < 256; b += blockDim.x) local[b] = 0u;
    __syncthreads();
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < len;
         i += (u64)gridDim.x * blockDim.x) {
        u32 k = keys[i];
        if ((k & mask) == prefix) atomicAdd(&local[(k >> shift) & 255u], 1u);
    }
    __syncthreads();
    for (u32 b = threadIdx.x; b < 256; b += blockDim.x) {
        if (local[b]) atomicAdd(&hist[b], local[b]);
    }
}

// positions with key > thresh go to above (counted in counts[0]), those with
// key == thresh to ties (counts[1]); both buffers hold every position that can arrive
extern "C" __global__ void select_collect_u32(u64 len, const u32* __restrict__ keys,
                                              u32 thresh, u32* __restrict__ above,
                                              u32* __restrict__ ties, u32* __restrict__ counts) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < len;
         i += (u64)gridDim.x * blockDim.x) {
        u32 k = keys[i];
        if (k > thresh) {
            above[atomicAdd(&counts[0], 1u)] = (u32)i;
        } else if (k == thresh) {
            ties[atomicAdd(&counts[1], 1u)] = (u32)i;
        }
    }
}
