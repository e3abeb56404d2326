/* 2DGS compositing, forward and backward, with a tile row's 16 pixels as float64 vector lanes (AVX-512): the
 * ``lanes`` compositing of rasterize_cpu_2dgs. Same inputs, outputs and rules as cpu_kernels.rasterize_2dgs_fwd /
 * _bwd (gsplat's RasterizeToPixels2DGS: per pixel and surfel the ray meets the surfel's plane at
 * c = h_u x h_v, h_u = x w - u, h_v = y w - v with u, v, w the rows of the splat-to-pixel transform M;
 * sigma = 0.5 min(|c_xy / c_z|^2, lowpass |mean - pixel|^2); pairs with c_z = 0 skipped; colours, depth, normals,
 * gsplat's depth distortion and the median depth composited), for RGB + depth (4 features) plus normals only.
 *
 * Where the scalar kernels visit each row's span (solved per row), these evaluate every pixel of each 8-lane half of
 * a row that the surfel's bounding box reaches: the rows and columns between the tangents of the splat disk's image
 * (from its dual conic), united with the low-pass disk, the whole tile where the image is not a bounded ellipse.
 * The exact test decides each pixel either way, so the pixels composited are the scalar kernels' (which equal a full
 * tile's). exp(-sigma) is evaluated per pixel (sigma is not a polynomial in the pixel, so there is no recurrence).
 * The results agree with the scalar kernels' to about 1e-13 relative, not to the bit (tests/test_rasterizer_lanes.py).
 *
 * Built and loaded by lanes.py with lanes_3dgs.c, called through ctypes; each call takes every n_workers-th tile
 * from ``worker`` on. */
#include "lanes_common.h"

#define FEATURES 4 /* RGB + depth */
#define CHANNELS (FEATURES + 3) /* then the three camera-space normals */
#define DEPTH (FEATURES - 1) /* the channel that distortion and median depth read */
#define GEOMETRY 12 /* mean x, mean y, M (9, row-major), opacity */
#define ROW (GEOMETRY + CHANNELS)

/* One surfel as seen from one tile: the tile rows [ylo, yhi) and the 8-lane halves (bit h) its bounding box reaches;
 * ``ok`` is 0 for a surfel to skip. */
typedef struct {
    const double *u, *v, *w;
    double mx, my, o, smax, depth;
    int64_t ylo, yhi;
    int ok, halves;
} Surfel;

/* The two lines x = k (p the u row of M) or y = k (p the v row) tangent to the splat disk's image,
 * |c_xy / c_z|^2 <= r2: with the dual conic C* = M diag(r2, r2, -1) M^T, the roots of C*_ww k^2 - 2 C*_pw k + C*_pp
 * (cpu_kernels.surfel_rows, for rows). Returns 0 where the image is not a bounded ellipse or nearly a parabola. */
static int tangents(const double *p, const double *w, double r2, double parabolic_margin, double *k_lo,
                    double *k_hi) {
    double cpp = r2 * (p[0] * p[0] + p[1] * p[1]) - p[2] * p[2];
    double cpw = r2 * (p[0] * w[0] + p[1] * w[1]) - p[2] * w[2];
    double cww = r2 * (w[0] * w[0] + w[1] * w[1]) - w[2] * w[2];
    double disc = cpw * cpw - cpp * cww;
    /* nearly a parabola: the near root would lose its digits to cancellation */
    if (!(cww < -parabolic_margin * (r2 * (w[0] * w[0] + w[1] * w[1]) + w[2] * w[2]) && disc >= 0)) return 0;
    double q = cpw + copysign(sqrt(disc), cpw); /* the roots q / cww and cpp / q: no cancellation */
    double k1 = q != 0 ? q / cww : 0.0, k2 = q != 0 ? cpp / q : 0.0;
    *k_lo = fmin(k1, k2), *k_hi = fmax(k1, k2);
    return 1;
}

static void surfel_at(Surfel *s, const double *row, const Tile *t, const Rules *rules) {
    s->mx = row[0], s->my = row[1], s->u = row + 2, s->v = row + 5, s->w = row + 8, s->o = row[11];
    s->depth = row[GEOMETRY + DEPTH];
    s->ok = s->o >= rules->thr; /* cpu_kernels.sigma_bound */
    if (!s->ok) return;
    double smax = log(s->o / rules->thr);
    s->smax = smax + rules->span_margin * (1.0 + smax);
    double half = sqrt(2.0 * s->smax / rules->lowpass); /* the low-pass disk: 0.5 lowpass |d|^2 <= smax */
    double r2 = 2.0 * s->smax, lo, hi;
    int64_t xlo = t->x0, xhi = t->x1;
    s->ylo = t->y0, s->yhi = t->y1;
    if (tangents(s->v, s->w, r2, rules->parabolic_margin, &lo, &hi))
        pixel_range(fmin(s->my - half, lo), fmax(s->my + half, hi), t->y0, t->y1, rules->pixel_margin, &s->ylo,
                    &s->yhi);
    if (tangents(s->u, s->w, r2, rules->parabolic_margin, &lo, &hi))
        pixel_range(fmin(s->mx - half, lo), fmax(s->mx + half, hi), t->x0, t->x1, rules->pixel_margin, &xlo, &xhi);
    s->halves = 0;
    for (int h = 0; h < HALVES; h++)
        if (xlo < t->x0 + 8 * (h + 1) && xhi > t->x0 + 8 * h) s->halves |= 1 << h;
}

/* The row at pixel centre py: c = px a - b with a = w x h_v, b = u x h_v, h_v = py w - v (cpu_kernels.row_planes). */
typedef struct {
    double ax, ay, az, bx, by, bz, hx, hy, hz;
} Planes;

static inline Planes row_planes(const Surfel *s, double py) {
    const double *u = s->u, *w = s->w;
    Planes q;
    q.hx = py * w[0] - s->v[0], q.hy = py * w[1] - s->v[1], q.hz = py * w[2] - s->v[2];
    q.ax = w[1] * q.hz - w[2] * q.hy, q.ay = w[2] * q.hx - w[0] * q.hz, q.az = w[0] * q.hy - w[1] * q.hx;
    q.bx = u[1] * q.hz - u[2] * q.hy, q.by = u[2] * q.hx - u[0] * q.hz, q.bz = u[0] * q.hy - u[1] * q.hx;
    return q;
}

/* The ray-splat point c and sigma on 8 lanes; ``ok`` the lanes where c_z != 0 and 0 <= sigma <= smax. */
typedef struct {
    __m512d cx, cy, cz, inv_cz, g3, g2, sigma;
    __mmask8 ok;
} Hit;

static inline Hit hit_at(const Surfel *s, const Planes *q, __m512d px, double row_g2, const Rules *rules) {
    Hit c;
    c.cz = _mm512_fmsub_pd(px, _mm512_set1_pd(q->az), _mm512_set1_pd(q->bz));
    c.cx = _mm512_fmsub_pd(px, _mm512_set1_pd(q->ax), _mm512_set1_pd(q->bx));
    c.cy = _mm512_fmsub_pd(px, _mm512_set1_pd(q->ay), _mm512_set1_pd(q->by));
    __m512d r2 = _mm512_fmadd_pd(c.cx, c.cx, _mm512_mul_pd(c.cy, c.cy));
    c.inv_cz = _mm512_div_pd(_mm512_set1_pd(1.0), c.cz); /* the backward's division too */
    c.g3 = _mm512_mul_pd(_mm512_mul_pd(r2, c.inv_cz), c.inv_cz);
    __m512d dx = _mm512_sub_pd(_mm512_set1_pd(s->mx), px);
    c.g2 = _mm512_fmadd_pd(_mm512_mul_pd(_mm512_set1_pd(rules->lowpass), dx), dx, _mm512_set1_pd(row_g2));
    c.sigma = _mm512_mul_pd(_mm512_set1_pd(0.5), _mm512_min_pd(c.g3, c.g2));
    c.ok = _mm512_cmp_pd_mask(c.cz, _mm512_setzero_pd(), _CMP_NEQ_OQ) &
           _mm512_cmp_pd_mask(c.sigma, _mm512_set1_pd(s->smax), _CMP_LE_OQ) &
           _mm512_cmp_pd_mask(c.sigma, _mm512_setzero_pd(), _CMP_GE_OQ);
    return c;
}

/* features [C, H, W, 4], normals [C, H, W, 3], T_final, distort, median [C, H, W], last and median_idx [C, H, W]
 * (indices into flatten_ids, -1 if none), as cpu_kernels.rasterize_2dgs_fwd fills them, and depth_total [C, H, W]
 * (the depth channel of features, which the backward reads); features, normals, distort and median in the caller's
 * dtype (io_f32), and with float32 also T_out, a float32 copy of T_final (NULL otherwise). */
void lanes_2dgs_fwd(const double *params, const int64_t *tile_offsets, const int64_t *flatten_ids, int64_t n_tiles,
                    int64_t tile_w, int64_t tile_h, int64_t width, int64_t height, const double *rule_values,
                    void *features, void *normals, double *T_final, void *distort, void *median, int64_t *last,
                    int64_t *median_idx, double *depth_total, float *T_out, int64_t io_f32, int64_t worker,
                    int64_t n_workers) {
    const Rules *rules = (const Rules *)rule_values;
    double T[TILE][TILE] __attribute__((aligned(64)));
    double acc[CHANNELS][TILE][TILE] __attribute__((aligned(64)));
    double dist[TILE][TILE] __attribute__((aligned(64)));
    double wd[TILE][TILE] __attribute__((aligned(64))); /* sum of w * depth so far */
    double med[TILE][TILE] __attribute__((aligned(64)));
    int64_t lastb[TILE][TILE] __attribute__((aligned(64)));
    int64_t medb[TILE][TILE] __attribute__((aligned(64)));
    unsigned int saved_csr = _mm_getcsr();
    _mm_setcsr(saved_csr | FLUSH_DENORMALS);
    const __m512d one = _mm512_set1_pd(1.0), zero = _mm512_setzero_pd();
    for (int64_t tile = worker; tile < n_tiles; tile += n_workers) {
        Tile t = tile_at(tile, tile_w, tile_h, width, height);
        if (t.x1 <= t.x0 || t.y1 <= t.y0) continue;
        __m512d px[HALVES], f[CHANNELS];
        lane_centres(&t, px);
        __mmask16 valid16 = (__mmask16)((1u << (t.x1 - t.x0)) - 1u);
        __mmask8 valid[HALVES] = {(__mmask8)(valid16 & 0xff), (__mmask8)(valid16 >> 8)};
        for (int r = 0; r < TILE; r++)
            for (int h = 0; h < HALVES; h++) {
                __mmask8 inside = r < t.y1 - t.y0 ? valid[h] : 0; /* T kept negated once done; outside starts done */
                _mm512_store_pd(&T[r][8 * h], _mm512_mask_mov_pd(_mm512_set1_pd(-1.0), inside, one));
                for (int k = 0; k < CHANNELS; k++) _mm512_store_pd(&acc[k][r][8 * h], zero);
                _mm512_store_pd(&dist[r][8 * h], zero);
                _mm512_store_pd(&wd[r][8 * h], zero);
                _mm512_store_pd(&med[r][8 * h], zero);
                _mm512_store_si512(&lastb[r][8 * h], _mm512_set1_epi64(-1));
                _mm512_store_si512(&medb[r][8 * h], _mm512_set1_epi64(-1));
            }
        int64_t n_live = (t.x1 - t.x0) * (t.y1 - t.y0);
        Surfel s;
        for (int64_t j = tile_offsets[tile]; j < tile_offsets[tile + 1] && n_live > 0; j++) {
            if (j + PREFETCH_AHEAD < tile_offsets[tile + 1])
                prefetch_row(params + flatten_ids[j + PREFETCH_AHEAD] * ROW, ROW);
            const double *row = params + flatten_ids[j] * ROW;
            surfel_at(&s, row, &t, rules);
            if (!s.ok || !s.halves) continue;
            for (int k = 0; k < CHANNELS; k++) f[k] = _mm512_set1_pd(row[GEOMETRY + k]);
            const __m512d vo = _mm512_set1_pd(s.o), depth = _mm512_set1_pd(s.depth);
            const __m512i vj = _mm512_set1_epi64(j);
            for (int64_t y = s.ylo; y < s.yhi; y++) {
                int r = (int)(y - t.y0);
                double py = (double)y + 0.5, dy = s.my - py;
                Planes q = row_planes(&s, py);
                for (int h = 0; h < HALVES; h++) {
                    if (!(s.halves >> h & 1)) continue;
                    __m512d Tv = _mm512_load_pd(&T[r][8 * h]);
                    __mmask8 live = _mm512_cmp_pd_mask(Tv, zero, _CMP_GT_OQ);
                    if (!live) continue;
                    Hit c = hit_at(&s, &q, px[h], rules->lowpass * dy * dy, rules);
                    __mmask8 ok = live & c.ok;
                    if (!ok) continue;
                    __m512d e = exp8(_mm512_sub_pd(zero, c.sigma));
                    __m512d alpha = _mm512_min_pd(_mm512_set1_pd(rules->max_alpha), _mm512_mul_pd(vo, e));
                    __mmask8 hit = ok & _mm512_cmp_pd_mask(alpha, _mm512_set1_pd(rules->thr), _CMP_GE_OQ);
                    if (!hit) continue;
                    __m512d next_T = _mm512_mul_pd(Tv, _mm512_sub_pd(one, alpha));
                    __mmask8 done =
                        hit & _mm512_cmp_pd_mask(next_T, _mm512_set1_pd(rules->min_transmittance), _CMP_LE_OQ);
                    __mmask8 take = hit & ~done;
                    __m512d vis = _mm512_mul_pd(alpha, Tv);
                    for (int k = 0; k < CHANNELS; k++)
                        _mm512_store_pd(&acc[k][r][8 * h],
                                        _mm512_mask3_fmadd_pd(vis, f[k], _mm512_load_pd(&acc[k][r][8 * h]), take));
                    /* distortion += 2 (w d (1 - T) - w A), A = sum of w * depth in front */
                    __m512d W = _mm512_load_pd(&wd[r][8 * h]);
                    __m512d vd = _mm512_mul_pd(vis, depth);
                    __m512d step = _mm512_fmsub_pd(vd, _mm512_sub_pd(one, Tv), _mm512_mul_pd(vis, W));
                    _mm512_store_pd(&dist[r][8 * h], _mm512_mask3_fmadd_pd(_mm512_set1_pd(2.0), step,
                                                                           _mm512_load_pd(&dist[r][8 * h]), take));
                    _mm512_store_pd(&wd[r][8 * h], _mm512_mask_add_pd(W, take, W, vd));
                    __mmask8 front = take & _mm512_cmp_pd_mask(Tv, _mm512_set1_pd(0.5), _CMP_GT_OQ);
                    _mm512_store_pd(&med[r][8 * h], _mm512_mask_mov_pd(_mm512_load_pd(&med[r][8 * h]), front, depth));
                    _mm512_store_si512(&medb[r][8 * h],
                                       _mm512_mask_mov_epi64(_mm512_load_si512(&medb[r][8 * h]), front, vj));
                    _mm512_store_si512(&lastb[r][8 * h],
                                       _mm512_mask_mov_epi64(_mm512_load_si512(&lastb[r][8 * h]), take, vj));
                    Tv = _mm512_mask_mov_pd(Tv, take, next_T);
                    Tv = _mm512_mask_sub_pd(Tv, done, zero, Tv);
                    _mm512_store_pd(&T[r][8 * h], Tv);
                    n_live -= __builtin_popcount((unsigned)done);
                }
            }
        }
        ieee_state(saved_csr);
        const int n = (int)(t.x1 - t.x0);
        for (int64_t y = t.y0; y < t.y1; y++) {
            int r = (int)(y - t.y0);
            int64_t at = (t.cam * height + y) * width + t.x0;
            double Tr[TILE] __attribute__((aligned(64)));
            for (int l = 0; l < TILE; l++) Tr[l] = fabs(T[r][l]);
            const double *colour[FEATURES] = {acc[0][r], acc[1][r], acc[2][r], acc[3][r]};
            const double *normal[3] = {acc[FEATURES][r], acc[FEATURES + 1][r], acc[FEATURES + 2][r]};
            const double *T_row = Tr, *dist_row = dist[r], *med_row = med[r];
            put_pixels(features, io_f32, at, FEATURES, colour, n);
            put_pixels(normals, io_f32, at, 3, normal, n);
            put_pixels(distort, io_f32, at, 1, &dist_row, n);
            put_pixels(median, io_f32, at, 1, &med_row, n);
            put_pixels(T_final, 0, at, 1, &T_row, n);
            if (T_out) put_pixels(T_out, 1, at, 1, &T_row, n);
            store_bytes(depth_total + at, acc[DEPTH][r], n * (int64_t)sizeof(double));
            store_bytes(last + at, lastb[r], n * (int64_t)sizeof(int64_t));
            store_bytes(median_idx + at, medb[r], n * (int64_t)sizeof(int64_t));
        }
        flush_state(saved_csr);
    }
    _mm_sfence(); /* the streaming stores are seen by whoever reads the images next */
    _mm_setcsr(saved_csr);
}

static inline void cross(const double a[3], const double b[3], double out[3]) {
    out[0] = a[1] * b[2] - a[2] * b[1], out[1] = a[2] * b[0] - a[0] * b[2], out[2] = a[0] * b[1] - a[1] * b[0];
}

/* dL/dM (u, v, w rows) from the ray-splat branch's sums over pixels (x, y) of vc = dL/dc: A0 = sum vc,
 * A1 = sum x vc, P0 = sum y vc (per lane, summed here). With c = h_u x h_v, h_u = x w - u, h_v = y w - v:
 * dL/dh_u = h_v x vc and dL/dh_v = vc x h_u, so dL/du = -sum h_v x vc = v x A0 - w x P0,
 * dL/dv = -sum vc x h_u = A0 x u - A1 x w and dL/dw = sum (x h_v x vc + y vc x h_u) = u x P0 - v x A1 (the
 * w x w terms cancel). The scalar kernels apply the same rule per row. */
static void surfel_grad(const Surfel *s, const __m512d a0[3], const __m512d a1[3], const __m512d p0[3], double *vM) {
    double A0[3], A1[3], P0[3], t1[3], t2[3];
    for (int i = 0; i < 3; i++)
        A0[i] = _mm512_reduce_add_pd(a0[i]), A1[i] = _mm512_reduce_add_pd(a1[i]), P0[i] = _mm512_reduce_add_pd(p0[i]);
    cross(s->v, A0, t1), cross(s->w, P0, t2);
    for (int i = 0; i < 3; i++) vM[i] = t1[i] - t2[i];
    cross(A0, s->u, t1), cross(A1, s->w, t2);
    for (int i = 0; i < 3; i++) vM[3 + i] = t1[i] - t2[i];
    cross(s->u, P0, t1), cross(s->v, A1, t2);
    for (int i = 0; i < 3; i++) vM[6 + i] = t1[i] - t2[i];
}

/* per_isect [M, 19]: dL/d(mean x, mean y, M (9), opacity, 4 features, 3 normals) per intersection (zero where the
 * surfel reaches no pixel), as cpu_kernels.rasterize_2dgs_bwd fills it, from the forward's T_final, last,
 * median_idx and depth_total (its depth channel: the sum of w * depth) and the output gradients v_features
 * [C, H, W, 4], v_normals [C, H, W, 3], v_T, v_distort and v_median [C, H, W] (in the caller's dtype, io_f32). */
void lanes_2dgs_bwd(const double *params, const int64_t *tile_offsets, const int64_t *flatten_ids, int64_t n_tiles,
                    int64_t tile_w, int64_t tile_h, int64_t width, int64_t height, const double *rule_values,
                    const double *T_final, const int64_t *last, const int64_t *median_idx, const double *depth_total,
                    const void *v_features, const void *v_normals, const void *v_T, const void *v_distort,
                    const void *v_median, int64_t io_f32, double *per_isect, int64_t worker, int64_t n_workers) {
    const Rules *rules = (const Rules *)rule_values;
    double T[TILE][TILE] __attribute__((aligned(64)));
    double Tf[TILE][TILE] __attribute__((aligned(64)));
    double later[TILE][TILE] __attribute__((aligned(64))); /* v_T T_final + sum over later surfels of w dL/dw */
    double behind_wd[TILE][TILE] __attribute__((aligned(64))); /* sum over later surfels of w * depth */
    double wd_total[TILE][TILE] __attribute__((aligned(64)));
    double gout[CHANNELS][TILE][TILE] __attribute__((aligned(64)));
    double gdist[TILE][TILE] __attribute__((aligned(64)));
    double gmed[TILE][TILE] __attribute__((aligned(64)));
    int64_t lastb[TILE][TILE] __attribute__((aligned(64)));
    int64_t medb[TILE][TILE] __attribute__((aligned(64)));
    unsigned int saved_csr = _mm_getcsr();
    _mm_setcsr(saved_csr | FLUSH_DENORMALS);
    const __m512d one = _mm512_set1_pd(1.0), zero = _mm512_setzero_pd(), two = _mm512_set1_pd(2.0);
    for (int64_t tile = worker; tile < n_tiles; tile += n_workers) {
        int64_t start = tile_offsets[tile], end = tile_offsets[tile + 1];
        for (int64_t k = start * ROW; k < end * ROW; k++) per_isect[k] = 0.0;
        if (start == end) continue;
        Tile t = tile_at(tile, tile_w, tile_h, width, height);
        __m512d px[HALVES], f[CHANNELS];
        lane_centres(&t, px);
        int64_t newest = -1;
        ieee_state(saved_csr);
        for (int r = 0; r < TILE; r++)
            for (int l = 0; l < TILE; l++) {
                int inside = t.y0 + r < t.y1 && t.x0 + l < t.x1;
                int64_t at = (t.cam * height + t.y0 + r) * width + t.x0 + l;
                T[r][l] = Tf[r][l] = inside ? T_final[at] : 1.0;
                later[r][l] = inside ? image_get(v_T, io_f32, at) * T[r][l] : 0.0;
                behind_wd[r][l] = 0.0;
                wd_total[r][l] = inside ? depth_total[at] : 0.0;
                lastb[r][l] = inside ? last[at] : -1; /* no surfel reaches lanes outside the image */
                medb[r][l] = inside ? median_idx[at] : -1;
                for (int k = 0; k < FEATURES; k++)
                    gout[k][r][l] = inside ? image_get(v_features, io_f32, at * FEATURES + k) : 0.0;
                for (int k = 0; k < 3; k++)
                    gout[FEATURES + k][r][l] = inside ? image_get(v_normals, io_f32, at * 3 + k) : 0.0;
                gdist[r][l] = inside ? image_get(v_distort, io_f32, at) : 0.0;
                gmed[r][l] = inside ? image_get(v_median, io_f32, at) : 0.0;
                if (lastb[r][l] > newest) newest = lastb[r][l];
            }
        flush_state(saved_csr);
        Surfel s;
        for (int64_t j = newest; j >= start; j--) {
            if (j - PREFETCH_AHEAD >= start) prefetch_row(params + flatten_ids[j - PREFETCH_AHEAD] * ROW, ROW);
            const double *row = params + flatten_ids[j] * ROW;
            surfel_at(&s, row, &t, rules);
            if (!s.ok || !s.halves) continue;
            for (int k = 0; k < CHANNELS; k++) f[k] = _mm512_set1_pd(row[GEOMETRY + k]);
            const __m512d vo_scale = _mm512_set1_pd(s.o), depth = _mm512_set1_pd(s.depth);
            const __m512i vj = _mm512_set1_epi64(j);
            __m512d vf[CHANNELS], vo = zero, lowpass_x = zero, lowpass_y = zero;
            for (int k = 0; k < CHANNELS; k++) vf[k] = zero;
            /* the ray-splat branch's dL/dc summed over the pixels as sum vc, sum x vc and sum y vc (x, y: pixel
             * centres), per lane; they give dL/dM at the end (surfel_grad) */
            __m512d a0[3] = {zero, zero, zero}, a1[3] = {zero, zero, zero}, p0[3] = {zero, zero, zero};
            for (int64_t y = s.ylo; y < s.yhi; y++) {
                int r = (int)(y - t.y0);
                double py = (double)y + 0.5, dy = s.my - py;
                Planes q = row_planes(&s, py);
                __m512d vdy = _mm512_set1_pd(dy), vpy = _mm512_set1_pd(py);
                for (int h = 0; h < HALVES; h++) {
                    if (!(s.halves >> h & 1)) continue;
                    __mmask8 valid = _mm512_cmp_epi64_mask(vj, _mm512_load_si512(&lastb[r][8 * h]), _MM_CMPINT_LE);
                    if (!valid) continue;
                    Hit c = hit_at(&s, &q, px[h], rules->lowpass * dy * dy, rules);
                    __mmask8 ok = valid & c.ok;
                    if (!ok) continue;
                    __m512d e = exp8(_mm512_sub_pd(zero, c.sigma));
                    __m512d oe = _mm512_mul_pd(vo_scale, e);
                    __m512d alpha = _mm512_min_pd(_mm512_set1_pd(rules->max_alpha), oe);
                    __mmask8 hit = ok & _mm512_cmp_pd_mask(alpha, _mm512_set1_pd(rules->thr), _CMP_GE_OQ);
                    if (!hit) continue;
                    __m512d Tv = _mm512_load_pd(&T[r][8 * h]);
                    __m512d inv = _mm512_div_pd(one, _mm512_sub_pd(one, alpha));
                    __m512d Tk = _mm512_mul_pd(Tv, inv); /* T in front of surfel j */
                    __m512d w = _mm512_mul_pd(alpha, Tk);
                    /* distortion D = sum_i 2 w_i (d_i (1 - T_i) - A_i), A_i = sum_{j<i} w_j d_j */
                    __m512d after = _mm512_sub_pd(Tv, _mm512_load_pd(&Tf[r][8 * h])); /* sum of w behind */
                    __m512d B = _mm512_load_pd(&behind_wd[r][8 * h]);
                    __m512d front_wd =
                        _mm512_sub_pd(_mm512_sub_pd(_mm512_load_pd(&wd_total[r][8 * h]), B), _mm512_mul_pd(w, depth));
                    __m512d one_minus_Tk = _mm512_sub_pd(one, Tk);
                    __m512d ahead = _mm512_sub_pd(_mm512_mul_pd(depth, one_minus_Tk), front_wd);
                    __m512d depth_after = _mm512_mul_pd(depth, after); /* summed left to right, as the spans kernel */
                    __m512d dD_dw = _mm512_mul_pd(two, _mm512_sub_pd(_mm512_add_pd(ahead, B), depth_after));
                    __m512d Gd = _mm512_load_pd(&gdist[r][8 * h]);
                    __m512d v_depth = _mm512_mul_pd(_mm512_mul_pd(Gd, _mm512_mul_pd(two, w)),
                                                    _mm512_sub_pd(one_minus_Tk, after));
                    __m512d qf = zero; /* dL/dw through the composited channels */
                    for (int k = 0; k < CHANNELS; k++) {
                        __m512d ok_k = _mm512_load_pd(&gout[k][r][8 * h]);
                        qf = _mm512_fmadd_pd(f[k], ok_k, qf);
                        vf[k] = _mm512_mask3_fmadd_pd(w, ok_k, vf[k], hit);
                    }
                    vf[DEPTH] = _mm512_mask_add_pd(vf[DEPTH], hit, vf[DEPTH], v_depth);
                    __m512i median_j = _mm512_load_si512(&medb[r][8 * h]);
                    __mmask8 is_median = hit & _mm512_cmp_epi64_mask(vj, median_j, _MM_CMPINT_EQ);
                    vf[DEPTH] = _mm512_mask_add_pd(vf[DEPTH], is_median, vf[DEPTH], _mm512_load_pd(&gmed[r][8 * h]));
                    __m512d v_w = _mm512_fmadd_pd(Gd, dD_dw, qf);
                    __m512d L = _mm512_load_pd(&later[r][8 * h]);
                    __m512d v_alpha = _mm512_fmsub_pd(Tk, v_w, _mm512_mul_pd(L, inv));
                    /* clamped alphas pass no gradient (gsplat) */
                    __mmask8 open = hit & _mm512_cmp_pd_mask(oe, _mm512_set1_pd(rules->max_alpha), _CMP_LE_OQ);
                    vo = _mm512_mask3_fmadd_pd(e, v_alpha, vo, open);
                    __m512d v_sigma = _mm512_mul_pd(_mm512_sub_pd(zero, alpha), v_alpha);
                    /* the ray-splat branch where g3 <= g2 (gsplat's choice on ties), else the low-pass one */
                    __mmask8 ray = open & _mm512_cmp_pd_mask(c.g3, c.g2, _CMP_LE_OQ), low = open & ~ray;
                    if (ray) {
                        __m512d inv_cz = c.inv_cz;
                        __m512d scale = _mm512_mul_pd(_mm512_mul_pd(v_sigma, inv_cz), inv_cz);
                        __m512d vcx = _mm512_mul_pd(scale, c.cx), vcy = _mm512_mul_pd(scale, c.cy);
                        __m512d vcz = _mm512_mul_pd(_mm512_sub_pd(zero, _mm512_mul_pd(v_sigma, c.g3)), inv_cz);
                        __m512d vc[3] = {vcx, vcy, vcz};
                        for (int i = 0; i < 3; i++) {
                            a0[i] = _mm512_mask_add_pd(a0[i], ray, a0[i], vc[i]);
                            a1[i] = _mm512_mask3_fmadd_pd(px[h], vc[i], a1[i], ray);
                            p0[i] = _mm512_mask3_fmadd_pd(vpy, vc[i], p0[i], ray);
                        }
                    }
                    /* low-pass: sigma = 0.5 lowpass |mean - pixel|^2 */
                    __m512d lv = _mm512_mul_pd(_mm512_set1_pd(rules->lowpass), v_sigma);
                    lowpass_x = _mm512_mask3_fmadd_pd(lv, _mm512_sub_pd(_mm512_set1_pd(s.mx), px[h]), lowpass_x, low);
                    lowpass_y = _mm512_mask3_fmadd_pd(lv, vdy, lowpass_y, low);
                    _mm512_store_pd(&later[r][8 * h], _mm512_mask3_fmadd_pd(w, v_w, L, hit));
                    _mm512_store_pd(&behind_wd[r][8 * h], _mm512_mask3_fmadd_pd(w, depth, B, hit));
                    _mm512_store_pd(&T[r][8 * h], _mm512_mask_mov_pd(Tv, hit, Tk));
                }
            }
            double *out = per_isect + j * ROW;
            out[0] = _mm512_reduce_add_pd(lowpass_x);
            out[1] = _mm512_reduce_add_pd(lowpass_y);
            surfel_grad(&s, a0, a1, p0, out + 2);
            out[11] = _mm512_reduce_add_pd(vo);
            for (int k = 0; k < CHANNELS; k++) out[GEOMETRY + k] = _mm512_reduce_add_pd(vf[k]);
        }
    }
    _mm_setcsr(saved_csr);
}
