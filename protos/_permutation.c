/* The permutation check of the reply gate, compiled (optional: protos/packing.py has the
 * same check in numpy and uses it when this module was not built).
 *
 * is_permutation(ranks) -> bool: whether a C-contiguous int64 buffer of n entries holds
 * every value of 0..n-1 exactly once. Each entry marks one bit of a table of n bits (100 KB
 * for an 800k-edge layer, which stays in the core's cache, where numpy's one flag byte an
 * entry of 2^bits entries does not); the first entry out of range or already marked ends
 * the walk. The GIL is released during the walk.
 */
#include "../fedrank/_buffer.h"
#include <stdint.h>
#include <stdlib.h>

static int walk(const int64_t *ranks, Py_ssize_t n, uint64_t *table)
{
    const uint64_t limit = (uint64_t)n;
    for (Py_ssize_t i = 0; i < n; i++) {
        const uint64_t value = (uint64_t)ranks[i]; /* a negative entry is huge */
        if (value >= limit)
            return 0;
        const uint64_t bit = (uint64_t)1 << (value & 63);
        uint64_t *word = table + (value >> 6);
        if (*word & bit)
            return 0;
        *word |= bit;
    }
    return 1; /* n distinct values in 0..n-1: all of them */
}

static PyObject *is_permutation(PyObject *self, PyObject *arg)
{
    (void)self;
    Py_buffer view;
    if (typed_buffer(arg, &view, "ranks", "1-D int64", "ql", 8, 1, 0) != 0)
        return NULL;
    const Py_ssize_t n = view.shape[0];
    uint64_t *table = calloc((size_t)(n / 64 + 1), sizeof(uint64_t));
    if (table == NULL) {
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    int verdict;
    Py_BEGIN_ALLOW_THREADS
    verdict = walk((const int64_t *)view.buf, n, table);
    Py_END_ALLOW_THREADS
    free(table);
    PyBuffer_Release(&view);
    return PyBool_FromLong(verdict);
}

static PyMethodDef methods[] = {
    {"is_permutation", is_permutation, METH_O,
     "is_permutation(ranks, /)\n--\n\nWhether a contiguous 1-D int64 buffer of n entries "
     "holds each of 0..n-1 exactly once."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_permutation",
    "The reply gate's permutation check, compiled.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__permutation(void) { return PyModule_Create(&module); }
