/* A typed view of a Python buffer, for fedrank's C modules (protos/_permutation.c,
 * fedrank/models/_topk.c). */
#ifndef FEDRANK_BUFFER_H
#define FEDRANK_BUFFER_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* A C-contiguous buffer of `object` into `view`: items of `itemsize` bytes whose struct
 * format code (after any byte-order prefix) is one of `codes`, in `ndim` dimensions when
 * `ndim` > 0, writable when asked. 0; or -1 with the buffer released and a TypeError
 * that names `name` and what was expected (`what`, e.g. "1-D int64"). */
static int typed_buffer(PyObject *object, Py_buffer *view, const char *name, const char *what,
                        const char *codes, Py_ssize_t itemsize, int ndim, int writable)
{
    const int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(object, view, flags) != 0)
        return -1;
    const char *format = view->format == NULL ? "B" : view->format;
    const char *code = format[0] == '<' || format[0] == '=' || format[0] == '@' ? format + 1
                                                                               : format;
    if (view->itemsize == itemsize && code[0] != '\0' && code[1] == '\0' &&
        strchr(codes, code[0]) != NULL && (ndim == 0 || view->ndim == ndim))
        return 0;
    PyErr_Format(PyExc_TypeError,
                 "%s: expected a contiguous %s buffer, got format '%s' of %zd-byte items in "
                 "%d dimensions",
                 name, what, format, view->itemsize, view->ndim);
    PyBuffer_Release(view);
    return -1;
}

#endif
