/* What the lanes kernels (lanes_3dgs.c, lanes_2dgs.c) share: the tile geometry, a tile row's 16 pixels as two
 * 8-lane float64 AVX-512 vectors, and a vector exp. */
#ifndef GFBENCH_LANES_COMMON_H
#define GFBENCH_LANES_COMMON_H
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define TILE 16
#define HALVES 2   /* 8-lane vectors per tile row */
#define EXP_LIMIT 700.0 /* |x| of exp(x) clamped here: results stay finite */
#define FLUSH_DENORMALS 0x8040 /* MXCSR: flush to zero, denormals are zero (alpha T can underflow) */

/* exp(x) for 8 doubles: x = n ln 2 + r (Cody-Waite ln 2 in two parts), exp(r) by its Taylor polynomial to r^13 (|r| <=
 * ln(2) / 2: remainder about 4e-18 relative), times 2^n. The polynomial is evaluated by Estrin's scheme (pairs of
 * terms, then pairs of pairs with r^2, r^4, r^8): a chain of 5 dependent multiply-adds instead of Horner's 13, which
 * is what a pixel row of a small splat waits on. */
static inline __m512d exp8(__m512d x) {
    x = _mm512_max_pd(_mm512_min_pd(x, _mm512_set1_pd(EXP_LIMIT)), _mm512_set1_pd(-EXP_LIMIT));
    __m512d n = _mm512_roundscale_pd(_mm512_mul_pd(x, _mm512_set1_pd(1.4426950408889634)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512d r = _mm512_fnmadd_pd(n, _mm512_set1_pd(6.93147180369123816490e-01), x);
    r = _mm512_fnmadd_pd(n, _mm512_set1_pd(1.90821492927058770002e-10), r);
    static const double c[14] = { /* 1 / k! */
        1.0, 1.0, 1.0 / 2, 1.0 / 6, 1.0 / 24, 1.0 / 120, 1.0 / 720, 1.0 / 5040, 1.0 / 40320, 1.0 / 362880,
        1.0 / 3628800, 1.0 / 39916800, 1.0 / 479001600, 1.0 / 6227020800.0};
    __m512d pair[7]; /* c_2i + c_2i+1 r */
    for (int i = 0; i < 7; i++) pair[i] = _mm512_fmadd_pd(_mm512_set1_pd(c[2 * i + 1]), r, _mm512_set1_pd(c[2 * i]));
    __m512d r2 = _mm512_mul_pd(r, r), r4 = _mm512_mul_pd(r2, r2), r8 = _mm512_mul_pd(r4, r4);
    __m512d q0 = _mm512_fmadd_pd(pair[1], r2, pair[0]), q1 = _mm512_fmadd_pd(pair[3], r2, pair[2]);
    __m512d q2 = _mm512_fmadd_pd(pair[5], r2, pair[4]);
    __m512d low = _mm512_fmadd_pd(q1, r4, q0), high = _mm512_fmadd_pd(pair[6], r4, q2); /* terms 0-7, 8-13 */
    return _mm512_scalef_pd(_mm512_fmadd_pd(high, r8, low), n);
}

#define PREFETCH_AHEAD 8 /* intersections ahead of the current one whose rows are fetched (cpu_kernels') */

/* Fetch every cache line of a row of n doubles ahead of its use (cpu_kernels.prefetch_row): tile lists visit the
 * per-Gaussian rows in a random order, and a row can straddle one more line than its length spans. */
static inline void prefetch_row(const double *row, int n) {
    for (int k = 0; k < n; k += 8) __builtin_prefetch(row + k);
    __builtin_prefetch(row + n - 1);
}

/* The images a caller reads and writes (colours, normals, alpha, distortion, median depth and their gradients) are
 * float64 or float32, the caller's dtype, as ``io_f32`` says: reading float32 and writing it here spares the caller
 * a conversion of each image. Conversions are those NumPy's astype makes, so callers run them with the caller's
 * floating-point state (``ieee_state``), not with denormals flushed (image_get here, put_pixels below). */
static inline double image_get(const void *image, int64_t io_f32, int64_t i) {
    return io_f32 ? (double)((const float *)image)[i] : ((const double *)image)[i];
}

/* Copy ``bytes`` from a 64-byte aligned buffer to an image: whole cache lines by streaming (non-temporal) stores where
 * the destination is line-aligned and the length a whole number of lines, else plainly (a kernel that streams ends
 * with a store fence). A tile's outputs written pixel by pixel into the images' rows, each store reading its cache line
 * in first, took a fifth of the 2DGS forward at 960x540; a tile row at a time, gathered in L1 and streamed to
 * line-aligned images, the forward ran a third faster (the rasterizer allocates its images so: an array from np.empty
 * starts 16 bytes off a line, and the copy was slower than the pixel-by-pixel stores). */
static inline void store_bytes(void *dst, const void *src, int64_t bytes) {
    if (((uintptr_t)dst & 63) == 0 && (bytes & 63) == 0) {
        for (int64_t i = 0; i < bytes; i += 64)
            _mm512_stream_si512((__m512i *)((char *)dst + i), _mm512_load_si512((const char *)src + i));
    } else {
        memcpy(dst, src, (size_t)bytes);
    }
}

#define MAX_CHANNELS 8

/* n pixels of K channels, channel k's values at rows[k][0..n), into a pixel-major image (K values per pixel, in the
 * caller's dtype) from pixel ``at`` on. */
static inline void put_pixels(void *image, int64_t io_f32, int64_t at, int K, const double *const *rows, int n) {
    double wide[TILE * MAX_CHANNELS] __attribute__((aligned(64)));
    for (int l = 0; l < n; l++)
        for (int k = 0; k < K; k++) wide[l * K + k] = rows[k][l];
    if (!io_f32) {
        store_bytes((double *)image + at * K, wide, (int64_t)n * K * (int64_t)sizeof(double));
        return;
    }
    float narrow[TILE * MAX_CHANNELS] __attribute__((aligned(64)));
    for (int i = 0; i < n * K; i++) narrow[i] = (float)wide[i];
    store_bytes((float *)image + at * K, narrow, (int64_t)n * K * (int64_t)sizeof(float));
}

/* Around a tile's image reads or writes: the caller's MXCSR (IEEE conversions, as NumPy's) and back to flushing. */
static inline void ieee_state(unsigned int saved_csr) { _mm_setcsr(saved_csr); }
static inline void flush_state(unsigned int saved_csr) { _mm_setcsr(saved_csr | FLUSH_DENORMALS); }

/* The compositing rules, from cpu_kernels (where the numbers live), in lanes.rules()'s order; each kernel reads
 * those it needs. */
typedef struct {
    double max_alpha, thr, min_transmittance, span_margin, pixel_margin, lowpass, parabolic_margin;
} Rules;

/* Pixels [lo, hi) within [start, stop) whose centre lies in [lo_f, hi_f], with slack (cpu_kernels.pixel_range). The
 * limits are clamped to [start - 1, stop + 1] first: a huge one (a near-singular conic's) never overflows the
 * integer conversion. */
static inline void pixel_range(double lo_f, double hi_f, int64_t start, int64_t stop, double margin, int64_t *lo,
                               int64_t *hi) {
    lo_f = fmin(fmax(lo_f, (double)start - 1.0), (double)stop + 1.0);
    hi_f = fmin(fmax(hi_f, (double)start - 1.0), (double)stop + 1.0);
    int64_t a = (int64_t)ceil(lo_f - 0.5 - margin), b = (int64_t)floor(hi_f - 0.5 + margin) + 1;
    *lo = a > start ? a : start;
    b = b < stop ? b : stop;
    *hi = b > *lo ? b : *lo;
}

typedef struct {
    int64_t cam, x0, y0, x1, y1;
} Tile;

static inline Tile tile_at(int64_t tile, int64_t tile_w, int64_t tile_h, int64_t width, int64_t height) {
    Tile t;
    int64_t local = tile % (tile_w * tile_h);
    t.cam = tile / (tile_w * tile_h);
    t.x0 = (local % tile_w) * TILE;
    t.y0 = (local / tile_w) * TILE;
    t.x1 = t.x0 + TILE < width ? t.x0 + TILE : width;
    t.y1 = t.y0 + TILE < height ? t.y0 + TILE : height;
    return t;
}

static inline void lane_centres(const Tile *t, __m512d px[HALVES]) {
    const __m512d lane = _mm512_setr_pd(0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5);
    for (int h = 0; h < HALVES; h++) px[h] = _mm512_add_pd(_mm512_set1_pd((double)(t->x0 + 8 * h)), lane);
}

#endif
