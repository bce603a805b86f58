/* The elementwise work of one step of the scratch GRU and LSTM, fused into one pass each.

   Why: in PyTorch's eager mode every elementwise operation is a separate call of a few
   microseconds and a separate pass over memory; a step of the LSTM runs about ten of them
   between its products. These loops do the same maths in one call per step (rnn/torch/fused.py
   compiles this file with the system's C compiler and loads it with ctypes; without a compiler
   the recurrences keep their eager code). All arrays are contiguous row-major float32.

   exp is a Cephes-style polynomial (about 1 ulp) that the compiler vectorises; a NaN input gives
   a NaN output (an infinite one too), so a diverging run is still seen as one. */

#include <stdint.h>
#include <string.h>

/* Rows are independent: with OpenMP (built with -fopenmp, sharing PyTorch's own runtime and
   thread count) a step's rows are split over the threads the products just used, so the result
   does not depend on the thread count (scatter_add, where rows meet, splits columns instead).
   Below this many elements a step is not worth a fork. */
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

/* The input's share of row b's gates: row b of this step's xw (`ids` NULL), or row ids[b] of a
   table (a first layer: W_x + b for each token, what the book's one-hot product computes), so a
   step reads a table that stays in cache instead of a gathered copy of the whole sequence. */
static inline const float *input_row(const float *x, const int64_t *ids, int b, int width) {
    return x + (ids ? ids[b] : (int64_t)b) * width;
}

/* LSTM forward, gates i, f, o, c~ side by side in `pre` (rows x 4h, the product H W_h), the
   input's share added here (a product that adds it copies it into its output first: a pass of
   its own): gates = [sig(i, f, o), tanh(c~)]; c' = f c + i c~; tanh_c = tanh(c'); h' = o tanh_c. */
void lstm_forward(int rows, int h, const float *pre, const float *x, const int64_t *ids,
                  const float *c, float *gates, float *c_new, float *tanh_c, float *h_new) {
#pragma omp parallel for schedule(static) if (rows * h >= PARALLEL_MIN)
    for (int b = 0; b < rows; b++) {
        const float *p = pre + (int64_t)b * 4 * h, *xr = input_row(x, ids, b, 4 * h);
        float *g = gates + (int64_t)b * 4 * h;
#pragma omp simd
        for (int j = 0; j < 3 * h; j++) g[j] = sigmoid(p[j] + xr[j]);
#pragma omp simd
        for (int j = 3 * h; j < 4 * h; j++) g[j] = tanh_approx(p[j] + xr[j]);
        const float *cb = c + (int64_t)b * h;
        float *cn = c_new + (int64_t)b * h, *tc = tanh_c + (int64_t)b * h;
        float *hn = h_new + (int64_t)b * h;
#pragma omp simd
        for (int j = 0; j < h; j++) {
            float cell = g[h + j] * cb[j] + g[j] * g[3 * h + j];
            cn[j] = cell;
            tc[j] = tanh_approx(cell);
            hn[j] = g[2 * h + j] * tc[j];
        }
    }
}

/* LSTM backward through one step: from dL/dH' = `prod` (the previous step's product back through
   W_h^T) + `later` (the loss's own gradient at H'; zeros at the last step) and dL/dC' (`grad_c`,
   updated in place to dL/dC), the gradient of the four pre-activations (`grad_pre`, rows x 4h). */
void lstm_backward(int rows, int h, const float *gates, const float *c, const float *tanh_c,
                   const float *prod, const float *later, float *grad_c, float *grad_pre) {
#pragma omp parallel for schedule(static) if (rows * h >= PARALLEL_MIN)
    for (int b = 0; b < rows; b++) {
        const float *g = gates + (int64_t)b * 4 * h;
        const float *cb = c + (int64_t)b * h, *tc = tanh_c + (int64_t)b * h;
        const float *pr = prod + (int64_t)b * h, *lt = later + (int64_t)b * h;
        float *dc = grad_c + (int64_t)b * h, *d = grad_pre + (int64_t)b * 4 * h;
#pragma omp simd
        for (int j = 0; j < h; j++) {
            float i = g[j], f = g[h + j], o = g[2 * h + j], cc = g[3 * h + j], t = tc[j];
            float dh = pr[j] + lt[j];
            float dcell = dc[j] + dh * o * (1.0f - t * t);
            d[j] = dcell * cc * i * (1.0f - i);
            d[h + j] = dcell * cb[j] * f * (1.0f - f);
            d[2 * h + j] = dh * t * o * (1.0f - o);
            d[3 * h + j] = dcell * i * (1.0f - cc * cc);
            dc[j] = dcell * f;
        }
    }
}

/* The book's GRU, after the product of H with [W_hz, W_hr]: gates = sig(pre + x) (z, r side by
   side, rows x 2h; x the input's share, see input_row); inner = R H, the candidate product's
   input. */
void gru_gates(int rows, int h, const float *pre, const float *x, const int64_t *ids,
               const float *hprev, float *gates, float *inner) {
#pragma omp parallel for schedule(static) if (rows * h >= PARALLEL_MIN)
    for (int b = 0; b < rows; b++) {
        const float *p = pre + (int64_t)b * 2 * h, *xr = input_row(x, ids, b, 2 * h);
        const float *hp = hprev + (int64_t)b * h;
        float *g = gates + (int64_t)b * 2 * h, *in = inner + (int64_t)b * h;
#pragma omp simd
        for (int j = 0; j < 2 * h; j++) g[j] = sigmoid(p[j] + xr[j]);
#pragma omp simd
        for (int j = 0; j < h; j++) in[j] = g[h + j] * hp[j];
    }
}

/* After the candidate's product: cand = tanh(pre + x); H' = Z H + (1 - Z) cand. */
void gru_blend(int rows, int h, const float *pre, const float *x, const int64_t *ids,
               const float *gates, const float *hprev, float *cand, float *h_new) {
#pragma omp parallel for schedule(static) if (rows * h >= PARALLEL_MIN)
    for (int b = 0; b < rows; b++) {
        const float *p = pre + (int64_t)b * h, *xr = input_row(x, ids, b, h);
        const float *z = gates + (int64_t)b * 2 * h, *hp = hprev + (int64_t)b * h;
        float *cd = cand + (int64_t)b * h, *hn = h_new + (int64_t)b * h;
#pragma omp simd
        for (int j = 0; j < h; j++) {
            float cj = tanh_approx(p[j] + xr[j]);
            cd[j] = cj;
            hn[j] = cj + z[j] * (hp[j] - cj);
        }
    }
}

/* GRU backward, first half: dL/dH' = `prod` + `carry` (the previous call's product back through
   [W_hz, W_hr] and gru_backward_r's carry; zeros at the last step) into `grad_h`, and from it the
   gradients of z's pre-activation (into `back`, whose rows are [d_z, d_r], rows x 2h) and of the
   candidate's (`grad_cand`). */
void gru_backward_z(int rows, int h, const float *gates, const float *cand, const float *hprev,
                    const float *prod, const float *carry, float *grad_h, float *back,
                    float *grad_cand) {
#pragma omp parallel for schedule(static) if (rows * h >= PARALLEL_MIN)
    for (int b = 0; b < rows; b++) {
        const float *z = gates + (int64_t)b * 2 * h, *cd = cand + (int64_t)b * h;
        const float *hp = hprev + (int64_t)b * h, *pr = prod + (int64_t)b * h;
        const float *cy = carry + (int64_t)b * h;
        float *dh = grad_h + (int64_t)b * h;
        float *bz = back + (int64_t)b * 2 * h, *dc = grad_cand + (int64_t)b * h;
#pragma omp simd
        for (int j = 0; j < h; j++) {
            float zj = z[j], cj = cd[j], d = pr[j] + cy[j];
            dh[j] = d;
            bz[j] = d * (hp[j] - cj) * zj * (1.0f - zj);
            dc[j] = d * (1.0f - zj) * (1.0f - cj * cj);
        }
    }
}

/* GRU backward, second half, given d_rh = dL/d(R H) (the candidate gradient back through W_hh):
   r's pre-activation gradient into `back`, and `carry` = what dL/dH gets besides the product
   of `back` with [W_hz, W_hr]^T: dL/dH' Z + d_rh R + the loss's own gradient at H (`later`). */
void gru_backward_r(int rows, int h, const float *gates, const float *hprev, const float *grad_h,
                    const float *d_rh, const float *later, float *back, float *carry) {
#pragma omp parallel for schedule(static) if (rows * h >= PARALLEL_MIN)
    for (int b = 0; b < rows; b++) {
        const float *z = gates + (int64_t)b * 2 * h, *r = z + h;
        const float *hp = hprev + (int64_t)b * h, *dh = grad_h + (int64_t)b * h;
        const float *drh = d_rh + (int64_t)b * h, *lt = later + (int64_t)b * h;
        float *br = back + (int64_t)b * 2 * h + h, *cy = carry + (int64_t)b * h;
#pragma omp simd
        for (int j = 0; j < h; j++) {
            float rj = r[j];
            br[j] = drh[j] * hp[j] * rj * (1.0f - rj);
            cy[j] = dh[j] * z[j] + drh[j] * rj + lt[j];
        }
    }
}

/* table[ids[i]] += src[i] for the n rows of src (width floats each), in row order: the gradient
   of a table whose rows a first layer's steps read (input_row). Threads take column blocks, so
   rows with the same id never race and each element's additions keep their order whatever the
   thread count. */
void scatter_add(int n, int width, const int64_t *ids, const float *src, float *table) {
    enum { BLOCK = 128 };
#pragma omp parallel for schedule(static) if ((int64_t)n * width >= PARALLEL_MIN)
    for (int j0 = 0; j0 < width; j0 += BLOCK) {
        int j1 = j0 + BLOCK < width ? j0 + BLOCK : width;
        for (int i = 0; i < n; i++) {
            float *dst = table + ids[i] * width;
            const float *row = src + (int64_t)i * width;
#pragma omp simd
            for (int j = j0; j < j1; j++) dst[j] += row[j];
        }
    }
}

/* dst = src^T for a rows x cols block of src whose rows lie `ld` floats apart (a column slice of
   a wider matrix, or the whole of a contiguous one): dst is cols x rows, contiguous. In 64 x 64
   tiles of 8 x 8 blocks, each read row by row and written column by column through a local
   copy the compiler keeps in registers; at the weight-gradient products' shapes (1120 x 256,
   1120 x 512) this takes half the time of PyTorch's strided copy of a transposed view, where a
   plain loop over a power-of-two stride does worse than that copy. */
static void transpose_edge(int i0, int i1, int j0, int j1, int rows, int ld, const float *src,
                           float *dst) {
    for (int i = i0; i < i1; i++)
        for (int j = j0; j < j1; j++) dst[(int64_t)j * rows + i] = src[(int64_t)i * ld + j];
}

void transpose(int rows, int cols, int ld, const float *src, float *dst) {
    enum { TILE = 64, BLOCK = 8 };
#pragma omp parallel for schedule(static) if ((int64_t)rows * cols >= 64 * PARALLEL_MIN)
    for (int i0 = 0; i0 < rows; i0 += TILE) {
        int i1 = i0 + TILE < rows ? i0 + TILE : rows;
        for (int j0 = 0; j0 < cols; j0 += TILE) {
            int j1 = j0 + TILE < cols ? j0 + TILE : cols;
            int i = i0;
            for (; i + BLOCK <= i1; i += BLOCK) {
                int j = j0;
                for (; j + BLOCK <= j1; j += BLOCK) {
                    float block[BLOCK][BLOCK];
                    for (int a = 0; a < BLOCK; a++)
                        for (int b = 0; b < BLOCK; b++)
                            block[b][a] = src[(int64_t)(i + a) * ld + j + b];
                    for (int b = 0; b < BLOCK; b++)
                        for (int a = 0; a < BLOCK; a++)
                            dst[(int64_t)(j + b) * rows + i + a] = block[b][a];
                }
                transpose_edge(i, i + BLOCK, j, j1, rows, ld, src, dst);
            }
            transpose_edge(i, i1, j0, j1, rows, ld, src, dst);
        }
    }
}
