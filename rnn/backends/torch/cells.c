/* The scratch GRU's and LSTM's recurrences over a whole minibatch, one C call each way: every
   step's product with the recurrent weights and its elementwise work, on weights packed once.

   Why: at the book's sizes a step's product is small (32 x 256 by 256 x 1024 for the LSTM) and
   the libraries PyTorch calls run it at about half the machine's rate: MKL takes its AVX2 code on
   AMD CPUs, oneDNN spends a fixed ~11 us a call, and either way each step is a Python call, a
   dispatch and a separate elementwise pass. Here each thread takes a block of rows (batch
   entries) for the whole sequence: per step it multiplies its rows by the weights, packed once
   per minibatch into panels of NR columns with every gate of a block of units side by side,
   through a register tile (multiply_tile: MR rows x NR columns, the weights' two vectors and
   one broadcast a term, at about 90% of the cores' FMA rate), and finishes the gates while the
   products are in cache. Rows are independent through time, so threads never meet inside a
   call (see Share). rnn/backends/torch/fused.py compiles this file with the system's C compiler and
   loads it with ctypes; without a compiler the recurrences keep their eager code.

   Deterministic whatever the thread count: each row's sums run in the same order on any
   thread. All arrays are contiguous row-major float32 (ids int64). exp is a Cephes-style
   polynomial (about 1 ulp) that the compiler vectorises; a NaN input gives a NaN output. */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* The register tile: MR rows by NR = 2 vectors of columns (accumulators 2 MR vectors, which
   must fit the register file with the two weight vectors). */
#if defined(__AVX512F__)
enum { VL = 16, MR = 8 };
#elif defined(__AVX__)
enum { VL = 8, MR = 6 };
#else
enum { VL = 4, MR = 8 };
#endif
enum { NR = 2 * VL };
typedef float vf __attribute__((vector_size(VL * sizeof(float)), aligned(sizeof(float))));

/* Below this many elements a step's rows are not worth more than one thread. */
#define PARALLEL_MIN 4096

static inline float exp_approx(float x) {
    /* Branch-free so that it vectorises: clamped to exp's float range by arithmetic masks (a
       NaN compares false and flows through to a NaN result); n = floor(x / ln 2 + 1/2) by
       truncation and a correction. */
    float v = x + (float)(x > 88.3762626647949f) * (88.3762626647949f - x);
    v = v + (float)(v < -87.3365447504f) * (-87.3365447504f - v);
    float fx = v * 1.44269504088896341f + 0.5f;
    int32_t i = (int32_t)fx;
    i -= (float)i > fx;
    float n = (float)i;
    float r = v - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float y = p * r * r + r + 1.0f;
    int32_t bits = (i + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return y * scale;
}

static inline float sigmoid(float x) { return 1.0f / (1.0f + exp_approx(-x)); }

static inline float tanh_approx(float x) { return 2.0f / (1.0f + exp_approx(-2.0f * x)) - 1.0f; }

static inline int min_int(int a, int b) { return a < b ? a : b; }

/* The number of columns in a packed panel, for fused.py to size the packed weights. */
int panel_columns(void) { return NR; }

/* out (MR x NR, rows `ld` floats apart) = rows a[0..MR) (k_len floats each) times a packed
   panel (k_len x NR). */
static inline void multiply_tile(int k_len, const float *const *a, const float *panel, float *out,
                                 int ld) {
    vf lo[MR], hi[MR];
    for (int r = 0; r < MR; r++) lo[r] = hi[r] = (vf){0};
    for (int k = 0; k < k_len; k++) {
        vf b0 = *(const vf *)(panel + (int64_t)k * NR);
        vf b1 = *(const vf *)(panel + (int64_t)k * NR + VL);
#pragma GCC unroll 8
        for (int r = 0; r < MR; r++) {
            float s = a[r][k];
            lo[r] += s * b0;
            hi[r] += s * b1;
        }
    }
    for (int r = 0; r < MR; r++) {
        *(vf *)(out + (int64_t)r * ld) = lo[r];
        *(vf *)(out + (int64_t)r * ld + VL) = hi[r];
    }
}

static int blocks_of(int h) { return (h + NR - 1) / NR; }

/* A thread's share of a minibatch: rows [lo, hi) for the whole sequence, all hidden units. Rows
   are independent through time, so threads never wait for each other or read each other's
   results (split by units instead, every step needs a barrier and an exchange of the new state
   between cores: 1.4x slower when the host placed the two vCPUs far apart). Each thread reads
   all the packed weights every step, from its L2 or the shared L3. Its products land in `pre`:
   MR rows of `groups` runs of `span` floats (the gates side by side, so the elementwise work
   runs along contiguous units). */
typedef struct {
    int lo, hi, blocks, span;
    float *pre;
} Share;

static Share my_share(int rows, int h, int groups) {
#ifdef _OPENMP
    int threads = omp_get_num_threads(), id = omp_get_thread_num();
#else
    int threads = 1, id = 0;
#endif
    Share sh;
    sh.lo = (int)((int64_t)rows * id / threads);
    sh.hi = (int)((int64_t)rows * (id + 1) / threads);
    sh.blocks = blocks_of(h);
    sh.span = sh.blocks * NR;
    sh.pre = aligned_alloc(64, sizeof(float) * ((size_t)MR * groups * sh.span + 16));
    return sh;
}

/* Rows i0..i0 + MR of m (`ld` floats apart, k_len used; rows from `hi` on repeat the last,
   computed and never stored, so every tile runs the same full-width code) times every panel of
   `packed` (pack_gates's layout, `groups` gates), into sh->pre. */
static void multiply_rows(int k_len, const float *m, int64_t ld, int i0, int hi,
                          const float *packed, int groups, const Share *sh) {
    const float *a[MR];
    for (int r = 0; r < MR; r++) a[r] = m + (int64_t)min_int(i0 + r, hi - 1) * ld;
    for (int b = 0; b < sh->blocks; b++)
        for (int g = 0; g < groups; g++)
            multiply_tile(k_len, a, packed + ((int64_t)b * groups + g) * k_len * NR,
                          sh->pre + g * sh->span + b * NR, groups * sh->span);
}

/* Packs w (k_len rows, `ld` floats apart; `groups` gates of h units side by side) into panels
   of NR units of one gate, a block's gates in a row: panel (b, g), row k, column u is
   w[k][g * h + b * NR + u], zero past the last unit. */
void pack_gates(int k_len, int h, int groups, int ld, const float *w, float *packed) {
    int panels = blocks_of(h) * groups;
#pragma omp parallel for schedule(static) if ((int64_t)k_len * h * groups >= PARALLEL_MIN)
    for (int p = 0; p < panels; p++) {
        int g = p % groups, j0 = (p / groups) * NR;
        for (int k = 0; k < k_len; k++) {
            float *out = packed + ((int64_t)p * k_len + k) * NR;
            const float *row = w + (int64_t)k * ld + g * h;
            for (int u = 0; u < NR; u++) out[u] = j0 + u < h ? row[j0 + u] : 0.0f;
        }
    }
}

/* Packs w^T (w: n rows of k_len floats, `ld` apart) as pack_gates packs one gate: panel p, row
   k, column u is w[p * NR + u][k], zero past the last row; the backward pass's right operand. */
void pack_transposed(int k_len, int n, int ld, const float *w, float *packed) {
#pragma omp parallel for schedule(static) if ((int64_t)k_len * n >= PARALLEL_MIN)
    for (int p = 0; p < blocks_of(n); p++)
        for (int u = 0; u < NR; u++) {
            int j = p * NR + u;
            float *out = packed + (int64_t)p * k_len * NR + u;
            for (int k = 0; k < k_len; k++)
                out[(int64_t)k * NR] = j < n ? w[(int64_t)j * ld + k] : 0.0f;
        }
}

/* The input's share of a step's row b: row b of that step's xw (`ids` NULL), or row ids[b] of
   a table (a first layer: W_x + b for each token, what the book's one-hot product computes). */
static inline const float *input_row(const float *x, const int64_t *ids, int b, int width) {
    return x + (ids ? ids[b] : (int64_t)b) * width;
}

/* Step t's input: (its rows of xw, NULL) or (the table, its ids). */
static inline const float *step_input(const float *x, const int64_t *ids, int t, int rows,
                                      int width, const int64_t **step_ids) {
    *step_ids = ids ? ids + (int64_t)t * rows : NULL;
    return ids ? x : x + (int64_t)t * rows * width;
}

/* LSTM forward over `steps` steps, gates i, f, o, c~ (W_h packed by pack_gates, 4 groups):
   gates = [sig(i, f, o), tanh(c~)] of H W_h + x; c' = f c + i c~; tanh_c = tanh(c');
   h' = o tanh_c. hs and cs are (steps + 1) x rows x h with the initial state in their first. */
void lstm_forward(int steps, int rows, int h, const float *w_packed, const float *x,
                  const int64_t *ids, float *hs, float *cs, float *gates, float *tanh_c) {
    int64_t hh = (int64_t)rows * h;
#pragma omp parallel if (hh >= PARALLEL_MIN)
    {
        Share sh = my_share(rows, h, 4);
        int n = h, span = sh.span;
        for (int t = 0; t < steps; t++) {
            const int64_t *id;
            const float *xt = step_input(x, ids, t, rows, 4 * h, &id);
            for (int i0 = sh.lo; i0 < sh.hi; i0 += MR) {
                multiply_rows(h, hs + t * hh, h, i0, sh.hi, w_packed, 4, &sh);
                for (int r = 0; r < min_int(MR, sh.hi - i0); r++) {
                    int64_t b = i0 + r, o = b * h;
                    const float *xr = input_row(xt, id, (int)b, 4 * h);
                    const float *pre = sh.pre + r * 4 * span, *cp = cs + t * hh + o;
                    float *g = gates + 4 * t * hh + b * 4 * h;
                    float *cn = cs + (t + 1) * hh + o, *tc = tanh_c + t * hh + o;
                    float *hn = hs + (t + 1) * hh + o;
#pragma omp simd
                    for (int u = 0; u < n; u++) {
                        float i = sigmoid(pre[u] + xr[u]);
                        float f = sigmoid(pre[span + u] + xr[h + u]);
                        float og = sigmoid(pre[2 * span + u] + xr[2 * h + u]);
                        float cc = tanh_approx(pre[3 * span + u] + xr[3 * h + u]);
                        g[u] = i, g[h + u] = f, g[2 * h + u] = og, g[3 * h + u] = cc;
                        float cell = f * cp[u] + i * cc, th = tanh_approx(cell);
                        cn[u] = cell, tc[u] = th, hn[u] = og * th;
                    }
                }
            }
        }
        free(sh.pre);
    }
}

/* LSTM backward (W_h^T packed by pack_transposed): from dL/dH at every step (`grad_hs`) and
   dL/dC at the last (`grad_c`, updated in place to dL/dC_0), the gradient of every step's four
   pre-activations (`grad_pre`, steps x rows x 4h) and dL/dH_0 (`grad_h0`). */
void lstm_backward(int steps, int rows, int h, const float *wt_packed, const float *gates,
                   const float *cs, const float *tanh_c, const float *grad_hs, float *grad_c,
                   float *grad_pre, float *grad_h0) {
    int64_t hh = (int64_t)rows * h;
#pragma omp parallel if (hh >= PARALLEL_MIN)
    {
        Share sh = my_share(rows, h, 1);
        int n = h;
        for (int t = steps - 1; t >= -1; t--) { /* t = -1: dL/dH_0 alone */
            for (int i0 = sh.lo; i0 < sh.hi; i0 += MR) {
                if (t == steps - 1) /* dL/dH_T is the loss's own alone */
                    memset(sh.pre, 0, sizeof(float) * MR * sh.span);
                else
                    multiply_rows(4 * h, grad_pre + 4 * (t + 1) * hh, 4 * h, i0, sh.hi, wt_packed,
                                  1, &sh);
                for (int r = 0; r < min_int(MR, sh.hi - i0); r++) {
                    int64_t b = i0 + r, o = b * h;
                    const float *prod = sh.pre + r * sh.span;
                    if (t < 0) {
                        memcpy(grad_h0 + o, prod, n * sizeof(float));
                        continue;
                    }
                    const float *g = gates + 4 * t * hh + b * 4 * h;
                    const float *cp = cs + t * hh + o, *tc = tanh_c + t * hh + o;
                    const float *later = grad_hs + t * hh + o;
                    float *dc = grad_c + o, *d = grad_pre + 4 * t * hh + b * 4 * h;
#pragma omp simd
                    for (int u = 0; u < n; u++) {
                        float i = g[u], f = g[h + u], og = g[2 * h + u], cc = g[3 * h + u];
                        float th = tc[u], dh = prod[u] + later[u];
                        float dcell = dc[u] + dh * og * (1.0f - th * th);
                        d[u] = dcell * cc * i * (1.0f - i);
                        d[h + u] = dcell * cp[u] * f * (1.0f - f);
                        d[2 * h + u] = dh * th * og * (1.0f - og);
                        d[3 * h + u] = dcell * i * (1.0f - cc * cc);
                        dc[u] = dcell * f;
                    }
                }
            }
        }
        free(sh.pre);
    }
}

/* The book's GRU forward (reset before: the candidate's product takes R H), gates z, r and
   candidate c: [W_hz, W_hr] packed by pack_gates (2 groups), W_hh by pack_gates (1 group).
   Z, R = sig(H [W_hz, W_hr] + x_zr); inner = R H; C = tanh(inner W_hh + x_h);
   H' = Z H + (1 - Z) C. hs is (steps + 1) x rows x h with the initial state first. */
void gru_forward(int steps, int rows, int h, const float *zr_packed, const float *hh_packed,
                 const float *x_zr, const float *x_h, const int64_t *ids, float *hs,
                 float *gates, float *inner, float *cand) {
    int64_t hh = (int64_t)rows * h;
#pragma omp parallel if (hh >= PARALLEL_MIN)
    {
        Share sh = my_share(rows, h, 2);
        int n = h, span = sh.span;
        for (int t = 0; t < steps; t++) {
            const int64_t *id;
            const float *xzr = step_input(x_zr, ids, t, rows, 2 * h, &id);
            const float *xh = step_input(x_h, ids, t, rows, h, &id);
            float *g = gates + 2 * t * hh, *in = inner + t * hh;
            for (int i0 = sh.lo; i0 < sh.hi; i0 += MR) {
                multiply_rows(h, hs + t * hh, h, i0, sh.hi, zr_packed, 2, &sh);
                for (int r = 0; r < min_int(MR, sh.hi - i0); r++) {
                    int64_t b = i0 + r, o = b * h;
                    const float *xr = input_row(xzr, id, (int)b, 2 * h);
                    const float *pre = sh.pre + r * 2 * span, *hp = hs + t * hh + o;
                    float *gb = g + b * 2 * h;
#pragma omp simd
                    for (int u = 0; u < n; u++) {
                        float z = sigmoid(pre[u] + xr[u]);
                        float rg = sigmoid(pre[span + u] + xr[h + u]);
                        gb[u] = z, gb[h + u] = rg, in[o + u] = rg * hp[u];
                    }
                }
            }
            for (int i0 = sh.lo; i0 < sh.hi; i0 += MR) {
                multiply_rows(h, in, h, i0, sh.hi, hh_packed, 1, &sh);
                for (int r = 0; r < min_int(MR, sh.hi - i0); r++) {
                    int64_t b = i0 + r, o = b * h;
                    const float *xr = input_row(xh, id, (int)b, h);
                    const float *pre = sh.pre + r * span, *z = g + b * 2 * h;
                    const float *hp = hs + t * hh + o;
                    float *cd = cand + t * hh + o, *hn = hs + (t + 1) * hh + o;
#pragma omp simd
                    for (int u = 0; u < n; u++) {
                        float c = tanh_approx(pre[u] + xr[u]);
                        cd[u] = c, hn[u] = c + z[u] * (hp[u] - c);
                    }
                }
            }
        }
        free(sh.pre);
    }
}

/* The book's GRU backward ([W_hz, W_hr]^T and W_hh^T packed by pack_transposed): from dL/dH at
   every step, the pre-activation gradients [d_z, d_r] (`back`, steps x rows x 2h) and d_c
   (`grad_cand`, steps x rows x h), and dL/dH_0 (`grad_h0`). `grad_h` and `carry` (rows x h) are
   scratch: dL/dH' at this step, and what dL/dH gets besides the product of `back` with
   [W_hz, W_hr]^T (dL/dH' Z + d(R H) R + the loss's own gradient). */
void gru_backward(int steps, int rows, int h, const float *zr_packed, const float *hh_packed,
                  const float *gates, const float *cand, const float *hs, const float *grad_hs,
                  float *back, float *grad_cand, float *grad_h, float *carry, float *grad_h0) {
    int64_t hh = (int64_t)rows * h;
#pragma omp parallel if (hh >= PARALLEL_MIN)
    {
        Share sh = my_share(rows, h, 1);
        int n = h;
        for (int t = steps - 1; t >= -1; t--) { /* t = -1: dL/dH_0 alone */
            /* dL/dH' = [d_z, d_r]_{t+1} [W_hz, W_hr]^T + carry (at the last step the loss's
               own gradient alone); then d_z and d_c */
            for (int i0 = sh.lo; i0 < sh.hi; i0 += MR) {
                if (t == steps - 1)
                    memset(sh.pre, 0, sizeof(float) * MR * sh.span);
                else
                    multiply_rows(2 * h, back + 2 * (t + 1) * hh, 2 * h, i0, sh.hi, zr_packed, 1,
                                  &sh);
                for (int r = 0; r < min_int(MR, sh.hi - i0); r++) {
                    int64_t b = i0 + r, o = b * h;
                    const float *prod = sh.pre + r * sh.span;
                    const float *add = t == steps - 1 ? grad_hs + t * hh + o : carry + o;
                    if (t < 0) {
                        for (int u = 0; u < n; u++) grad_h0[o + u] = prod[u] + add[u];
                        continue;
                    }
                    const float *z = gates + 2 * t * hh + b * 2 * h;
                    const float *c = cand + t * hh + o, *hp = hs + t * hh + o;
                    float *dh = grad_h + o, *bz = back + 2 * t * hh + b * 2 * h;
                    float *dc = grad_cand + t * hh + o;
#pragma omp simd
                    for (int u = 0; u < n; u++) {
                        float d = prod[u] + add[u], zu = z[u], cu = c[u];
                        dh[u] = d;
                        bz[u] = d * (hp[u] - cu) * zu * (1.0f - zu);
                        dc[u] = d * (1.0f - zu) * (1.0f - cu * cu);
                    }
                }
            }
            if (t < 0) break;
            /* d(R H) = d_c W_hh^T; then d_r and the carry */
            for (int i0 = sh.lo; i0 < sh.hi; i0 += MR) {
                multiply_rows(h, grad_cand + t * hh, h, i0, sh.hi, hh_packed, 1, &sh);
                for (int r = 0; r < min_int(MR, sh.hi - i0); r++) {
                    int64_t b = i0 + r, o = b * h;
                    const float *drh = sh.pre + r * sh.span;
                    const float *z = gates + 2 * t * hh + b * 2 * h, *rg = z + h;
                    const float *hp = hs + t * hh + o, *dh = grad_h + o;
                    const float *later = t > 0 ? grad_hs + (t - 1) * hh + o : NULL;
                    float *br = back + 2 * t * hh + b * 2 * h + h, *cy = carry + o;
#pragma omp simd
                    for (int u = 0; u < n; u++) {
                        br[u] = drh[u] * hp[u] * rg[u] * (1.0f - rg[u]);
                        cy[u] = dh[u] * z[u] + drh[u] * rg[u] + (later ? later[u] : 0.0f);
                    }
                }
            }
        }
        free(sh.pre);
    }
}
