/* The layouts around the recurrences' products: the scatter of a first layer's table gradient
   and a tiled transpose for the weight gradients' operands. Compiled with cells.c into one
   library (rnn/backends/torch/fused.py). All arrays are contiguous row-major float32 (ids int64). */

#include <stdint.h>

/* Below this many elements a pass is not worth more than one thread. */
#define PARALLEL_MIN 4096

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
