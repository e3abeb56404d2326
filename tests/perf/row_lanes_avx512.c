/* 3DGS forward compositing with a tile row's 16 pixels as vector lanes (the GPU's layout), hand-written with
 * AVX-512 intrinsics: the ``avx512*`` columns of bench_row_lanes.py, which compiles this file (gcc -O3
 * -march=native) and calls it through ctypes. ``fwd_lanes``: float32, a row is one 16-lane vector;
 * ``fwd_lanes_f64``: float64 (the production kernels' precision), a row is two 8-lane vectors, exp(-sigma) at every
 * pixel or by a recurrence down the rows (``row_recurrence``). One camera, one
 * thread, RGB + depth (4 features), Gaussian rows [G, F] (mean x, mean y, conic a, b, c, opacity, features),
 * gsplat's compositing rules; the same rows as the production kernel visits (the ellipse's, from the opacity
 * bound), every pixel of each row. Returns the number of Gaussian-rows evaluated. An experiment, not part of the
 * package. */
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

/* exp(x) for 8 doubles, as exp512 with float64 constants: Cody-Waite ln 2 in two parts and Taylor terms to r^13
 * (|r| <= ln(2) / 2: remainder about 4e-18 relative, below float64 rounding); x clamped to [-700, 700]. */
static inline __m512d exp512d(__m512d x) {
    static const double inverse_factorial[14] = {
        1.0, 1.0, 1.0 / 2, 1.0 / 6, 1.0 / 24, 1.0 / 120, 1.0 / 720, 1.0 / 5040, 1.0 / 40320, 1.0 / 362880,
        1.0 / 3628800, 1.0 / 39916800, 1.0 / 479001600, 1.0 / 6227020800.0};
    x = _mm512_max_pd(_mm512_min_pd(x, _mm512_set1_pd(700.0)), _mm512_set1_pd(-700.0));
    __m512d n = _mm512_roundscale_pd(_mm512_mul_pd(x, _mm512_set1_pd(1.4426950408889634)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512d r = _mm512_fnmadd_pd(n, _mm512_set1_pd(6.93147180369123816490e-01), x);
    r = _mm512_fnmadd_pd(n, _mm512_set1_pd(1.90821492927058770002e-10), r);
    __m512d p = _mm512_set1_pd(inverse_factorial[13]);
    for (int k = 12; k >= 0; k--) p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(inverse_factorial[k]));
    return _mm512_scalef_pd(p, n);
}

#define HALVES 2 /* 8-lane vectors per tile row */

/* ``row_recurrence`` 0: exp(-sigma) at every pixel of every row. 1: as the production kernel's recurrence, but down
 * the rows: with dy = my - (y + 0.5), sigma(y + 1) = sigma(y) - b dx - c dy + c / 2, so
 * E(y + 1) = E(y) exp(b dx) g(y), g(y) = exp(c dy - c / 2), g(y + 1) = g(y) exp(-c): two vector exps per Gaussian
 * (its first row and exp(b dx)) and two multiplies per pixel and row after that. */
int64_t fwd_lanes_f64(const double *params, int64_t F, const int64_t *tile_offsets, const int64_t *flatten_ids,
                      int64_t tile_w, int64_t tile_h, int64_t width, int64_t height, double max_alpha, double thr,
                      double min_transmittance, double span_margin, double pixel_margin, int64_t row_recurrence,
                      double *colors, double *T_final, int64_t *last) {
    double T[TILE][TILE] __attribute__((aligned(64)));
    double acc[4][TILE][TILE] __attribute__((aligned(64)));
    int64_t lastb[TILE][TILE] __attribute__((aligned(64)));
    int64_t rows_done = 0;
    unsigned int saved_csr = _mm_getcsr();
    _mm_setcsr(saved_csr | 0x8040); /* as fwd_lanes: vis = alpha T can be denormal */
    const __m512d lane = _mm512_setr_pd(0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5);
    for (int64_t tile = 0; tile < tile_w * tile_h; tile++) {
        int64_t x0 = (tile % tile_w) * TILE, y0 = (tile / tile_w) * TILE;
        int64_t x1 = x0 + TILE < width ? x0 + TILE : width, y1 = y0 + TILE < height ? y0 + TILE : height;
        __mmask16 valid16 = (__mmask16)((1u << (x1 - x0)) - 1u);
        __mmask8 valid[HALVES] = {(__mmask8)(valid16 & 0xff), (__mmask8)(valid16 >> 8)};
        __m512d px[HALVES], f[4];
        for (int h = 0; h < HALVES; h++) px[h] = _mm512_add_pd(_mm512_set1_pd((double)(x0 + 8 * h)), lane);
        for (int r = 0; r < TILE; r++)
            for (int h = 0; h < HALVES; h++) {
                __m512d t = _mm512_mask_mov_pd(_mm512_set1_pd(-1.0), r < y1 - y0 ? valid[h] : 0, _mm512_set1_pd(1.0));
                _mm512_store_pd(&T[r][8 * h], t);
                for (int k = 0; k < 4; k++) _mm512_store_pd(&acc[k][r][8 * h], _mm512_setzero_pd());
                _mm512_store_si512(&lastb[r][8 * h], _mm512_set1_epi64(-1));
            }
        int64_t n_live = (x1 - x0) * (y1 - y0);
        for (int64_t j = tile_offsets[tile]; j < tile_offsets[tile + 1] && n_live > 0; j++) {
            if (j + 8 < tile_offsets[tile + 1]) __builtin_prefetch(params + flatten_ids[j + 8] * F);
            const double *g = params + flatten_ids[j] * F;
            double mx = g[0], my = g[1], a = g[2], b = g[3], c = g[4], o = g[5];
            if (o < thr) continue;
            double smax = log(o / thr);
            smax += span_margin * (1.0 + smax);
            double det = a * c - b * b;
            if (!(a > 0 && det > 0)) continue;
            double ey = sqrt(2.0 * smax * a / det);
            int64_t ylo = (int64_t)ceil(my - ey - 0.5 - pixel_margin);
            int64_t yhi = (int64_t)floor(my + ey - 0.5 + pixel_margin) + 1;
            if (ylo < y0) ylo = y0;
            if (yhi > y1) yhi = y1;
            __m512d dx[HALVES], qx[HALVES], E[HALVES], Fx[HALVES];
            double dy0 = my - ((double)ylo + 0.5), row_factor = 0.0, row_step = 0.0;
            for (int h = 0; h < HALVES; h++) {
                dx[h] = _mm512_sub_pd(_mm512_set1_pd(mx), px[h]);
                qx[h] = _mm512_mul_pd(_mm512_mul_pd(_mm512_set1_pd(0.5 * a), dx[h]), dx[h]);
                if (row_recurrence) {
                    __m512d sigma0 = _mm512_fmadd_pd(_mm512_set1_pd(b * dy0), dx[h],
                                                     _mm512_add_pd(qx[h], _mm512_set1_pd(0.5 * c * dy0 * dy0)));
                    E[h] = exp512d(_mm512_sub_pd(_mm512_setzero_pd(), sigma0));
                    Fx[h] = exp512d(_mm512_mul_pd(_mm512_set1_pd(b), dx[h]));
                } else {
                    E[h] = Fx[h] = _mm512_setzero_pd();
                }
            }
            if (row_recurrence) {
                row_factor = exp(fmin(fmax(c * dy0 - 0.5 * c, -700.0), 700.0));
                row_step = exp(-c);
            }
            __m512d vo = _mm512_set1_pd(o);
            for (int k = 0; k < 4; k++) f[k] = _mm512_set1_pd(g[6 + k]);
            __m512i vj = _mm512_set1_epi64(j);
            for (int64_t y = ylo; y < yhi; y++) {
                int r = (int)(y - y0);
                double dy = my - ((double)y + 0.5);
                __m512d by = _mm512_set1_pd(b * dy), cy = _mm512_set1_pd(0.5 * c * dy * dy);
                int counted = 0;
                for (int h = 0; h < HALVES; h++) {
                    __m512d e = E[h];
                    if (row_recurrence)
                        E[h] = _mm512_mul_pd(_mm512_mul_pd(E[h], Fx[h]), _mm512_set1_pd(row_factor));
                    __m512d Tv = _mm512_load_pd(&T[r][8 * h]);
                    __mmask8 live = _mm512_cmp_pd_mask(Tv, _mm512_setzero_pd(), _CMP_GT_OQ);
                    if (!live) continue;
                    rows_done += !counted;
                    counted = 1;
                    if (!row_recurrence) {
                        __m512d sigma = _mm512_fmadd_pd(by, dx[h], _mm512_add_pd(qx[h], cy));
                        e = exp512d(_mm512_sub_pd(_mm512_setzero_pd(), sigma));
                    }
                    __m512d alpha = _mm512_min_pd(_mm512_set1_pd(max_alpha), _mm512_mul_pd(vo, e));
                    __mmask8 hit = live & _mm512_cmp_pd_mask(alpha, _mm512_set1_pd(thr), _CMP_GE_OQ);
                    if (!hit) continue;
                    __m512d nT = _mm512_mul_pd(Tv, _mm512_sub_pd(_mm512_set1_pd(1.0), alpha));
                    __mmask8 fin = hit & _mm512_cmp_pd_mask(nT, _mm512_set1_pd(min_transmittance), _CMP_LE_OQ);
                    __mmask8 take = hit & ~fin;
                    __m512d vis = _mm512_mul_pd(alpha, Tv);
                    for (int k = 0; k < 4; k++)
                        _mm512_store_pd(&acc[k][r][8 * h],
                                        _mm512_mask3_fmadd_pd(vis, f[k], _mm512_load_pd(&acc[k][r][8 * h]), take));
                    _mm512_store_si512(&lastb[r][8 * h],
                                       _mm512_mask_mov_epi64(_mm512_load_si512(&lastb[r][8 * h]), take, vj));
                    Tv = _mm512_mask_mov_pd(Tv, take, nT);
                    Tv = _mm512_mask_sub_pd(Tv, fin, _mm512_setzero_pd(), Tv);
                    _mm512_store_pd(&T[r][8 * h], Tv);
                    n_live -= __builtin_popcount((unsigned)fin);
                }
                row_factor *= row_step;
            }
        }
        for (int64_t y = y0; y < y1; y++)
            for (int64_t x = x0; x < x1; x++) {
                int r = (int)(y - y0), l = (int)(x - x0);
                T_final[y * width + x] = fabs(T[r][l]);
                last[y * width + x] = lastb[r][l];
                for (int k = 0; k < 4; k++) colors[(y * width + x) * 4 + k] = acc[k][r][l];
            }
    }
    _mm_setcsr(saved_csr);
    return rows_done;
}
