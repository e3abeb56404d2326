/* 3DGS compositing, forward and backward, with a tile row's 16 pixels as float64 vector lanes (AVX-512): the
 * ``lanes`` compositing of rasterize_cpu (GFBENCH_CPU_COMPOSITING, lanes.py). Same inputs, outputs and rules as
 * cpu_kernels.rasterize_3dgs_fwd / _bwd (gsplat's: alpha = min(max_alpha, o exp(-sigma)), contributions below thr
 * skipped, a pixel done before the Gaussian that would take T to <= min_transmittance; backward back to front from
 * each pixel's last contributor, T recovered by dividing by 1 - alpha), for RGB + depth (4 features) only.
 *
 * Where the scalar kernels visit each row's span and get exp(-sigma) along it by a recurrence, these evaluate every
 * pixel of each row the ellipse reaches, with the recurrence turned 90 degrees: with dy = my - (y + 0.5),
 * sigma(y + 1) = sigma(y) - b dx - c dy + c / 2, so E(y + 1) = E(y) exp(b dx) g(y), g(y) = exp(c dy - c / 2),
 * g(y + 1) = g(y) exp(-c): two vector exps per Gaussian and tile, then two multiplies per pixel and row. That is
 * right only while every E, factor and ratio exp(b dx) g(y) is a normal number, never clamped or flushed, so a
 * Gaussian whose sigma or b dx + c dy over the tile's lanes and rows could leave RECURRENCE_RANGE (thin ones seen at
 * an angle, long ones whose mean is far from the tile) gets exp(-sigma) at every pixel instead. The results agree
 * with the scalar kernels' to about 1e-13 relative, not to the bit (tests/test_rasterizer_lanes.py).
 *
 * Built and loaded by lanes.py (gcc -O3 -march=native, on the machine that runs it), called through ctypes, which
 * releases the GIL; each call takes every n_workers-th tile from ``worker`` on. */
#include "lanes_common.h"

#define FEATURES 4 /* RGB + depth */
#define ROW (6 + FEATURES)
#define RECURRENCE_RANGE 650.0 /* the row recurrence is used while sigma and |b dx| + |c dy| + |c| stay below this:
                                  E, exp(b dx), g and their ratio then lie within exp(+-650), normal numbers (the
                                  smallest is exp(-708)), and no exp is clamped at EXP_LIMIT */

/* One Gaussian as seen from one tile: its parameters, the tile rows [ylo, yhi) and the 8-lane halves (bit h of
 * ``halves``) its ellipse reaches, and either the state of the row recurrence (E per half-row, exp(b dx), g and its
 * per-row factor) or, where the recurrence is not safe (``recurrence`` 0), what exp(-sigma) at every pixel needs
 * (0.5 a dx^2 per lane). ``ok`` is 0 for a Gaussian to skip. */
typedef struct {
    double mx, my, a, b, c, o;
    int64_t ylo, yhi;
    int ok, recurrence, halves;
    __m512d dx[HALVES], qx[HALVES], E[HALVES], Fx[HALVES];
    double g, g_step;
} Splat;

static inline __m512d sigma8(const Splat *s, int h, double dy) {
    return _mm512_fmadd_pd(_mm512_set1_pd(s->b * dy), s->dx[h],
                           _mm512_add_pd(s->qx[h], _mm512_set1_pd(0.5 * s->c * dy * dy)));
}

static void splat_at(Splat *s, const double *row, const Tile *t, const __m512d px[HALVES], const Rules *rules) {
    double thr = rules->thr;
    s->mx = row[0], s->my = row[1], s->a = row[2], s->b = row[3], s->c = row[4], s->o = row[5];
    double det = s->a * s->c - s->b * s->b;
    s->ok = s->o >= thr && s->a > 0 && det > 0; /* the scalar kernels' sigma_bound and positive_definite */
    if (!s->ok) return;
    double smax = log(s->o / thr);
    smax += rules->span_margin * (1.0 + smax);
    double ey = sqrt(2.0 * smax * s->a / det); /* cpu_kernels.ellipse_rows */
    pixel_range(s->my - ey, s->my + ey, t->y0, t->y1, rules->pixel_margin, &s->ylo, &s->yhi);
    /* the columns likewise (sigma <= smax needs dx^2 <= 2 smax c / det): the halves outside them hold no pixel the
     * Gaussian composites, and are not evaluated (the recurrence's check below still covers both, as it always did,
     * so that a Gaussian takes the same path, and gives the same bits, either way) */
    double ex = sqrt(2.0 * smax * s->c / det);
    int64_t xlo, xhi;
    pixel_range(s->mx - ex, s->mx + ex, t->x0, t->x1, rules->pixel_margin, &xlo, &xhi);
    s->halves = 0;
    for (int h = 0; h < HALVES; h++)
        if (xlo < t->x0 + 8 * (h + 1) && xhi > t->x0 + 8 * h) s->halves |= 1 << h;
    double dy0 = s->my - ((double)s->ylo + 0.5), dy_last = s->my - ((double)s->yhi - 0.5);
    /* the recurrence where it is exact: sigma within RECURRENCE_RANGE at every lane of the first and last row (sigma
     * is convex along a lane's rows, so those bound the rows between), and |b dx| + |c dy| too */
    double dx_far = fmax(fabs(s->mx - ((double)t->x0 + 0.5)), fabs(s->mx - ((double)t->x0 + TILE - 0.5)));
    double factors = fabs(s->b) * dx_far + fabs(s->c) * (fmax(fabs(dy0), fabs(dy_last)) + 1.0);
    s->recurrence = s->ylo < s->yhi && factors <= RECURRENCE_RANGE;
    __m512d sigma0[HALVES];
    const __m512d range = _mm512_set1_pd(RECURRENCE_RANGE);
    for (int h = 0; h < HALVES; h++) {
        s->dx[h] = _mm512_sub_pd(_mm512_set1_pd(s->mx), px[h]);
        s->qx[h] = _mm512_mul_pd(_mm512_mul_pd(_mm512_set1_pd(0.5 * s->a), s->dx[h]), s->dx[h]);
        sigma0[h] = sigma8(s, h, dy0);
        __mmask8 beyond = _mm512_cmp_pd_mask(sigma0[h], range, _CMP_GT_OQ) |
                          _mm512_cmp_pd_mask(sigma8(s, h, dy_last), range, _CMP_GT_OQ);
        if (beyond) s->recurrence = 0;
    }
    if (s->recurrence)
        for (int h = 0; h < HALVES; h++) {
            if (!(s->halves >> h & 1)) continue;
            s->E[h] = exp8(_mm512_sub_pd(_mm512_setzero_pd(), sigma0[h]));
            s->Fx[h] = exp8(_mm512_mul_pd(_mm512_set1_pd(s->b), s->dx[h]));
        }
    s->g = s->recurrence ? exp(s->c * dy0 - 0.5 * s->c) : 0.0;
    s->g_step = exp(-s->c);
}

/* exp(-sigma) on half-row h of the row at ``dy`` (= my - row centre), by the recurrence (then moved on to the next
 * row) or directly. */
static inline __m512d splat_row(Splat *s, int h, double dy) {
    if (!s->recurrence) return exp8(_mm512_sub_pd(_mm512_setzero_pd(), sigma8(s, h, dy)));
    __m512d e = s->E[h];
    s->E[h] = _mm512_mul_pd(s->E[h], _mm512_mul_pd(s->Fx[h], _mm512_set1_pd(s->g))); /* E times the row's ratio */
    return e;
}

/* colors [C, H, W, 4], T_final [C, H, W] and last [C, H, W] (index into flatten_ids, -1 if none), as
 * cpu_kernels.rasterize_3dgs_fwd fills them; colors in the caller's dtype (io_f32), and with float32 also T_out, a
 * float32 copy of T_final (NULL otherwise). */
void lanes_3dgs_fwd(const double *params, const int64_t *tile_offsets, const int64_t *flatten_ids, int64_t n_tiles,
                    int64_t tile_w, int64_t tile_h, int64_t width, int64_t height, const double *rule_values,
                    void *colors, double *T_final, int64_t *last, float *T_out, int64_t io_f32, int64_t worker,
                    int64_t n_workers) {
    const Rules *rules = (const Rules *)rule_values;
    const double max_alpha = rules->max_alpha, thr = rules->thr, min_transmittance = rules->min_transmittance;
    double T[TILE][TILE] __attribute__((aligned(64)));
    double acc[FEATURES][TILE][TILE] __attribute__((aligned(64)));
    int64_t lastb[TILE][TILE] __attribute__((aligned(64)));
    unsigned int saved_csr = _mm_getcsr();
    _mm_setcsr(saved_csr | FLUSH_DENORMALS);
    for (int64_t tile = worker; tile < n_tiles; tile += n_workers) {
        Tile t = tile_at(tile, tile_w, tile_h, width, height);
        if (t.x1 <= t.x0 || t.y1 <= t.y0) continue; /* no pixels (tile lists inconsistent with the image) */
        __m512d px[HALVES], f[FEATURES];
        lane_centres(&t, px);
        __mmask16 valid16 = (__mmask16)((1u << (t.x1 - t.x0)) - 1u); /* lanes inside the image */
        __mmask8 valid[HALVES] = {(__mmask8)(valid16 & 0xff), (__mmask8)(valid16 >> 8)};
        for (int r = 0; r < TILE; r++)
            for (int h = 0; h < HALVES; h++) {
                /* T is kept negated once a pixel is done; lanes outside the image start done */
                __mmask8 inside = r < t.y1 - t.y0 ? valid[h] : 0;
                _mm512_store_pd(&T[r][8 * h], _mm512_mask_mov_pd(_mm512_set1_pd(-1.0), inside, _mm512_set1_pd(1.0)));
                for (int k = 0; k < FEATURES; k++) _mm512_store_pd(&acc[k][r][8 * h], _mm512_setzero_pd());
                _mm512_store_si512(&lastb[r][8 * h], _mm512_set1_epi64(-1));
            }
        int64_t n_live = (t.x1 - t.x0) * (t.y1 - t.y0);
        Splat s;
        for (int64_t j = tile_offsets[tile]; j < tile_offsets[tile + 1] && n_live > 0; j++) {
            if (j + PREFETCH_AHEAD < tile_offsets[tile + 1])
                prefetch_row(params + flatten_ids[j + PREFETCH_AHEAD] * ROW, ROW);
            const double *row = params + flatten_ids[j] * ROW;
            splat_at(&s, row, &t, px, rules);
            if (!s.ok || !s.halves) continue;
            __m512d vo = _mm512_set1_pd(s.o);
            for (int k = 0; k < FEATURES; k++) f[k] = _mm512_set1_pd(row[6 + k]);
            __m512i vj = _mm512_set1_epi64(j);
            for (int64_t y = s.ylo; y < s.yhi; y++, s.g *= s.g_step) {
                int r = (int)(y - t.y0);
                double dy = s.my - ((double)y + 0.5);
                for (int h = 0; h < HALVES; h++) {
                    if (!(s.halves >> h & 1)) continue;
                    __m512d e = splat_row(&s, h, dy);
                    __m512d Tv = _mm512_load_pd(&T[r][8 * h]);
                    __mmask8 live = _mm512_cmp_pd_mask(Tv, _mm512_setzero_pd(), _CMP_GT_OQ);
                    if (!live) continue;
                    __m512d alpha = _mm512_min_pd(_mm512_set1_pd(max_alpha), _mm512_mul_pd(vo, e));
                    __mmask8 hit = live & _mm512_cmp_pd_mask(alpha, _mm512_set1_pd(thr), _CMP_GE_OQ);
                    if (!hit) continue;
                    __m512d next_T = _mm512_mul_pd(Tv, _mm512_sub_pd(_mm512_set1_pd(1.0), alpha));
                    __mmask8 done = hit & _mm512_cmp_pd_mask(next_T, _mm512_set1_pd(min_transmittance), _CMP_LE_OQ);
                    __mmask8 take = hit & ~done;
                    __m512d vis = _mm512_mul_pd(alpha, Tv);
                    for (int k = 0; k < FEATURES; k++)
                        _mm512_store_pd(&acc[k][r][8 * h],
                                        _mm512_mask3_fmadd_pd(vis, f[k], _mm512_load_pd(&acc[k][r][8 * h]), take));
                    _mm512_store_si512(&lastb[r][8 * h],
                                       _mm512_mask_mov_epi64(_mm512_load_si512(&lastb[r][8 * h]), take, vj));
                    Tv = _mm512_mask_mov_pd(Tv, take, next_T);
                    Tv = _mm512_mask_sub_pd(Tv, done, _mm512_setzero_pd(), Tv);
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
            const double *colour[FEATURES] = {acc[0][r], acc[1][r], acc[2][r], acc[3][r]}, *T_row = Tr;
            put_pixels(colors, io_f32, at, FEATURES, colour, n);
            put_pixels(T_final, 0, at, 1, &T_row, n);
            if (T_out) put_pixels(T_out, 1, at, 1, &T_row, n);
            store_bytes(last + at, lastb[r], n * (int64_t)sizeof(int64_t));
        }
        flush_state(saved_csr);
    }
    _mm_sfence(); /* the streaming stores are seen by whoever reads the images next */
    _mm_setcsr(saved_csr);
}

/* per_isect [M, 10]: dL/d(mean x, mean y, conic a, b, c, opacity, 4 features) per intersection (zero where the
 * Gaussian reaches no pixel), as cpu_kernels.rasterize_3dgs_bwd fills it, from the forward's T_final and last
 * and the output gradients v_colors [C, H, W, 4] and v_T [C, H, W] (in the caller's dtype, io_f32). Per-Gaussian
 * sums stay in vector accumulators (both halves of a row in the same ones) and are summed across lanes once per
 * intersection. */
void lanes_3dgs_bwd(const double *params, const int64_t *tile_offsets, const int64_t *flatten_ids, int64_t n_tiles,
                    int64_t tile_w, int64_t tile_h, int64_t width, int64_t height, const double *rule_values,
                    const double *T_final, const int64_t *last, const void *v_colors, const void *v_T,
                    int64_t io_f32, double *per_isect, int64_t worker, int64_t n_workers) {
    const Rules *rules = (const Rules *)rule_values;
    const double max_alpha = rules->max_alpha, thr = rules->thr;
    double T[TILE][TILE] __attribute__((aligned(64)));
    double later[TILE][TILE] __attribute__((aligned(64))); /* v_T T_final + sum over later Gaussians of w dL/dw */
    double gout[FEATURES][TILE][TILE] __attribute__((aligned(64)));
    int64_t lastb[TILE][TILE] __attribute__((aligned(64)));
    unsigned int saved_csr = _mm_getcsr();
    _mm_setcsr(saved_csr | FLUSH_DENORMALS);
    for (int64_t tile = worker; tile < n_tiles; tile += n_workers) {
        int64_t start = tile_offsets[tile], end = tile_offsets[tile + 1];
        for (int64_t k = start * ROW; k < end * ROW; k++) per_isect[k] = 0.0;
        if (start == end) continue;
        Tile t = tile_at(tile, tile_w, tile_h, width, height);
        __m512d px[HALVES], f[FEATURES];
        lane_centres(&t, px);
        int64_t newest = -1;
        ieee_state(saved_csr);
        for (int r = 0; r < TILE; r++)
            for (int l = 0; l < TILE; l++) {
                int inside = t.y0 + r < t.y1 && t.x0 + l < t.x1;
                int64_t at = (t.cam * height + t.y0 + r) * width + t.x0 + l;
                T[r][l] = inside ? T_final[at] : 1.0;
                later[r][l] = inside ? image_get(v_T, io_f32, at) * T[r][l] : 0.0;
                lastb[r][l] = inside ? last[at] : -1; /* no Gaussian reaches lanes outside the image */
                for (int k = 0; k < FEATURES; k++)
                    gout[k][r][l] = inside ? image_get(v_colors, io_f32, at * FEATURES + k) : 0.0;
                if (lastb[r][l] > newest) newest = lastb[r][l];
            }
        flush_state(saved_csr);
        Splat s;
        for (int64_t j = newest; j >= start; j--) {
            if (j - PREFETCH_AHEAD >= start) prefetch_row(params + flatten_ids[j - PREFETCH_AHEAD] * ROW, ROW);
            const double *row = params + flatten_ids[j] * ROW;
            splat_at(&s, row, &t, px, rules);
            if (!s.ok || !s.halves) continue;
            for (int k = 0; k < FEATURES; k++) f[k] = _mm512_set1_pd(row[6 + k]);
            /* dL/dsigma v summed as v dy, v dy^2, v dx, v dx dy and v dx^2, chained through sigma once at the end */
            __m512d s0dy = _mm512_setzero_pd(), s0dy2 = s0dy, s1 = s0dy, s1dy = s0dy, s2 = s0dy, vo = s0dy;
            __m512d vf[FEATURES] = {s0dy, s0dy, s0dy, s0dy};
            const __m512i vj = _mm512_set1_epi64(j);
            for (int64_t y = s.ylo; y < s.yhi; y++, s.g *= s.g_step) {
                int r = (int)(y - t.y0);
                double dy = s.my - ((double)y + 0.5);
                __m512d vdy = _mm512_set1_pd(dy);
                for (int h = 0; h < HALVES; h++) {
                    if (!(s.halves >> h & 1)) continue;
                    __m512d e = splat_row(&s, h, dy);
                    __mmask8 valid = _mm512_cmp_epi64_mask(vj, _mm512_load_si512(&lastb[r][8 * h]), _MM_CMPINT_LE);
                    if (!valid) continue;
                    __m512d oe = _mm512_mul_pd(_mm512_set1_pd(s.o), e);
                    __m512d alpha = _mm512_min_pd(_mm512_set1_pd(max_alpha), oe);
                    __mmask8 hit = valid & _mm512_cmp_pd_mask(alpha, _mm512_set1_pd(thr), _CMP_GE_OQ);
                    if (!hit) continue;
                    __m512d inv = _mm512_div_pd(_mm512_set1_pd(1.0), _mm512_sub_pd(_mm512_set1_pd(1.0), alpha));
                    __m512d Tk = _mm512_mul_pd(_mm512_load_pd(&T[r][8 * h]), inv); /* T in front of Gaussian j */
                    __m512d w = _mm512_mul_pd(alpha, Tk);
                    __m512d qf = _mm512_setzero_pd(); /* dL/dw = feature . dL/dcolour */
                    for (int k = 0; k < FEATURES; k++) {
                        __m512d ok = _mm512_load_pd(&gout[k][r][8 * h]);
                        qf = _mm512_fmadd_pd(f[k], ok, qf);
                        vf[k] = _mm512_mask3_fmadd_pd(w, ok, vf[k], hit);
                    }
                    __m512d L = _mm512_load_pd(&later[r][8 * h]);
                    __m512d v_alpha = _mm512_fmsub_pd(Tk, qf, _mm512_mul_pd(L, inv));
                    /* clamped alphas pass no gradient (gsplat) */
                    __mmask8 open = hit & _mm512_cmp_pd_mask(oe, _mm512_set1_pd(max_alpha), _CMP_LE_OQ);
                    vo = _mm512_mask3_fmadd_pd(e, v_alpha, vo, open);
                    __m512d v_sigma = _mm512_mul_pd(_mm512_sub_pd(_mm512_setzero_pd(), alpha), v_alpha);
                    __m512d vs_dx = _mm512_mul_pd(v_sigma, s.dx[h]), vs_dy = _mm512_mul_pd(v_sigma, vdy);
                    s0dy = _mm512_mask_add_pd(s0dy, open, s0dy, vs_dy);
                    s0dy2 = _mm512_mask3_fmadd_pd(vs_dy, vdy, s0dy2, open);
                    s1 = _mm512_mask_add_pd(s1, open, s1, vs_dx);
                    s1dy = _mm512_mask3_fmadd_pd(vs_dx, vdy, s1dy, open);
                    s2 = _mm512_mask3_fmadd_pd(vs_dx, s.dx[h], s2, open);
                    _mm512_store_pd(&later[r][8 * h], _mm512_mask3_fmadd_pd(w, qf, L, hit));
                    _mm512_store_pd(&T[r][8 * h], _mm512_mask_mov_pd(_mm512_load_pd(&T[r][8 * h]), hit, Tk));
                }
            }
            /* sigma = 0.5 a dx^2 + b dx dy + 0.5 c dy^2 with dx = mx - px, dy = my - py */
            double *out = per_isect + j * ROW;
            double S1 = _mm512_reduce_add_pd(s1), S0dy = _mm512_reduce_add_pd(s0dy);
            out[0] = s.a * S1 + s.b * S0dy;
            out[1] = s.b * S1 + s.c * S0dy;
            out[2] = 0.5 * _mm512_reduce_add_pd(s2);
            out[3] = _mm512_reduce_add_pd(s1dy);
            out[4] = 0.5 * _mm512_reduce_add_pd(s0dy2);
            out[5] = _mm512_reduce_add_pd(vo);
            for (int k = 0; k < FEATURES; k++) out[6 + k] = _mm512_reduce_add_pd(vf[k]);
        }
    }
    _mm_setcsr(saved_csr);
}
