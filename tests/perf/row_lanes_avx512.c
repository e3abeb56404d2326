/* 3DGS forward compositing with a tile row's 16 pixels as the lanes of one AVX-512 float32 vector (the GPU's
 * layout), hand-written with intrinsics: the ``avx512`` column of bench_row_lanes.py, which compiles this file
 * (gcc -O3 -march=native) and calls it through ctypes. One camera, one thread, RGB + depth (4 features), Gaussian
 * rows [G, F] of float32 (mean x, mean y, conic a, b, c, opacity, features), gsplat's compositing rules; the
 * same rows as the production kernel visits (the ellipse's, from the opacity bound), every pixel of each row,
 * exp(-sigma) at every pixel. Returns the number of Gaussian-rows evaluated. An experiment, not part of the
 * package; its float64 sibling, with exp by a recurrence down the rows, is the package's opt-in lanes compositing,
 * methods/core/lanes_3dgs.c. */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#define TILE 16

/* exp(x) for 16 floats: x = n ln 2 + r, exp(r) by its degree-6 Taylor polynomial, times 2^n (scalef); x is
 * clamped to [-80, 87] (-80: bench_row_lanes.SIGMA_CLAMP) so that results stay normal numbers (denormals cost
 * microcode assists). */
static inline __m512 exp512(__m512 x) {
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(87.0f)), _mm512_set1_ps(-80.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

int64_t fwd_lanes(const float *params, int64_t F, const int64_t *tile_offsets, const int64_t *flatten_ids,
                  int64_t tile_w, int64_t tile_h, int64_t width, int64_t height, float max_alpha, float thr,
                  float min_transmittance, float span_margin, float pixel_margin,
                  float *colors, float *T_final, int64_t *last) {
    float T[TILE][TILE] __attribute__((aligned(64)));
    float acc[4][TILE][TILE] __attribute__((aligned(64)));
    int32_t lastb[TILE][TILE] __attribute__((aligned(64)));
    int64_t rows_done = 0;
    unsigned int saved_csr = _mm_getcsr();
    _mm_setcsr(saved_csr | 0x8040); /* flush denormals to zero, treat them as zero */
    const __m512 lane = _mm512_setr_ps(0.5f, 1.5f, 2.5f, 3.5f, 4.5f, 5.5f, 6.5f, 7.5f,
                                       8.5f, 9.5f, 10.5f, 11.5f, 12.5f, 13.5f, 14.5f, 15.5f);
    for (int64_t tile = 0; tile < tile_w * tile_h; tile++) {
        int64_t x0 = (tile % tile_w) * TILE, y0 = (tile / tile_w) * TILE;
        int64_t x1 = x0 + TILE < width ? x0 + TILE : width, y1 = y0 + TILE < height ? y0 + TILE : height;
        __mmask16 valid = (__mmask16)((1u << (x1 - x0)) - 1u);
        for (int r = 0; r < TILE; r++) {
            __m512 t = _mm512_mask_mov_ps(_mm512_set1_ps(-1.0f), r < y1 - y0 ? valid : 0, _mm512_set1_ps(1.0f));
            _mm512_store_ps(T[r], t);
            for (int k = 0; k < 4; k++) _mm512_store_ps(acc[k][r], _mm512_setzero_ps());
            _mm512_store_si512(lastb[r], _mm512_set1_epi32(-1));
        }
        int64_t n_live = (x1 - x0) * (y1 - y0);
        __m512 px = _mm512_add_ps(_mm512_set1_ps((float)x0), lane);
        for (int64_t j = tile_offsets[tile]; j < tile_offsets[tile + 1] && n_live > 0; j++) {
            if (j + 8 < tile_offsets[tile + 1]) __builtin_prefetch(params + flatten_ids[j + 8] * F);
            const float *g = params + flatten_ids[j] * F;
            float mx = g[0], my = g[1], a = g[2], b = g[3], c = g[4], o = g[5];
            if (o < thr) continue;
            float smax = logf(o / thr);
            smax += span_margin * (1.0f + smax);
            float det = a * c - b * b;
            if (!(a > 0 && det > 0)) continue;
            float ey = sqrtf(2.0f * smax * a / det);
            int64_t ylo = (int64_t)ceilf(my - ey - 0.5f - pixel_margin);
            int64_t yhi = (int64_t)floorf(my + ey - 0.5f + pixel_margin) + 1;
            if (ylo < y0) ylo = y0;
            if (yhi > y1) yhi = y1;
            __m512 dx = _mm512_sub_ps(_mm512_set1_ps(mx), px);
            __m512 qx = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f * a), dx), dx);
            __m512 vo = _mm512_set1_ps(o);
            __m512 f0 = _mm512_set1_ps(g[6]), f1 = _mm512_set1_ps(g[7]), f2 = _mm512_set1_ps(g[8]), f3 = _mm512_set1_ps(g[9]);
            __m512i vj = _mm512_set1_epi32((int32_t)j);
            for (int64_t y = ylo; y < yhi; y++) {
                int r = (int)(y - y0);
                float dy = my - ((float)y + 0.5f);
                __m512 Tv = _mm512_load_ps(T[r]);
                __mmask16 live = _mm512_cmp_ps_mask(Tv, _mm512_setzero_ps(), _CMP_GT_OQ);
                if (!live) continue;
                rows_done++;
                __m512 sigma = _mm512_fmadd_ps(_mm512_set1_ps(b * dy), dx, _mm512_add_ps(qx, _mm512_set1_ps(0.5f * c * dy * dy)));
                __m512 alpha = _mm512_min_ps(_mm512_set1_ps(max_alpha), _mm512_mul_ps(vo, exp512(_mm512_sub_ps(_mm512_setzero_ps(), sigma))));
                __mmask16 hit = live & _mm512_cmp_ps_mask(alpha, _mm512_set1_ps(thr), _CMP_GE_OQ);
                if (!hit) continue;
                __m512 nT = _mm512_mul_ps(Tv, _mm512_sub_ps(_mm512_set1_ps(1.0f), alpha));
                __mmask16 fin = hit & _mm512_cmp_ps_mask(nT, _mm512_set1_ps(min_transmittance), _CMP_LE_OQ);
                __mmask16 take = hit & ~fin;
                __m512 vis = _mm512_mul_ps(alpha, Tv);
                _mm512_store_ps(acc[0][r], _mm512_mask3_fmadd_ps(vis, f0, _mm512_load_ps(acc[0][r]), take));
                _mm512_store_ps(acc[1][r], _mm512_mask3_fmadd_ps(vis, f1, _mm512_load_ps(acc[1][r]), take));
                _mm512_store_ps(acc[2][r], _mm512_mask3_fmadd_ps(vis, f2, _mm512_load_ps(acc[2][r]), take));
                _mm512_store_ps(acc[3][r], _mm512_mask3_fmadd_ps(vis, f3, _mm512_load_ps(acc[3][r]), take));
                _mm512_store_si512(lastb[r], _mm512_mask_mov_epi32(_mm512_load_si512(lastb[r]), take, vj));
                Tv = _mm512_mask_mov_ps(Tv, take, nT);
                Tv = _mm512_mask_sub_ps(Tv, fin, _mm512_setzero_ps(), Tv);
                _mm512_store_ps(T[r], Tv);
                n_live -= __builtin_popcount((unsigned)fin);
            }
        }
        for (int64_t y = y0; y < y1; y++)
            for (int64_t x = x0; x < x1; x++) {
                int r = (int)(y - y0), l = (int)(x - x0);
                T_final[y * width + x] = fabsf(T[r][l]);
                last[y * width + x] = lastb[r][l];
                for (int k = 0; k < 4; k++) colors[(y * width + x) * 4 + k] = acc[k][r][l];
            }
    }
    _mm_setcsr(saved_csr);
    return rows_done;
}
