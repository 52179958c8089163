/* The evaluation's compiled helpers. Each does one plain job without the GIL, so threads overlap them, and each is
 * optional: where this module cannot be built, the numpy and pandas paths give the same results, only slower.
 *
 * - parse: the benchmark's descriptor CSVs, a rectangular table of plain decimal numbers, one delimiter, no header,
 *   no quotes, no blank lines, no spaces. Each value is rounded once to the nearest double (as pandas' C parser and
 *   glibc's strtod do) and then to float32, which is what the benchmark gets from
 *   ``pd.read_csv(...).astype(np.float32)``. Anything outside that grammar makes it return None and the caller reads
 *   the file with pandas, which accepts more and names what it cannot read: the parser only has to be exact on what
 *   it accepts, never complete. Reading 300 MB of CSV was half of an evaluation's time.
 * - parse_tasks: the task files (a header, then sequence names and non-negative integers), the same way.
 * - pair_distances: distances between scattered rows of two tables, prefetched: verification's (float32
 *   arithmetic) and matching's final ones (float64).
 * - count_ahead: retrieval's count of distractors nearer than each positive, per pool, in one sweep.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>

/* Exact powers of ten: every one up to 1e22 is representable in a double. */
static const double POW10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
                               1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

#define TWO53 9007199254740992ULL

/* Eight ASCII digits at once (SWAR, little-endian): whether the 8 bytes at p are all digits, and their value. */
static inline uint64_t load8(const char *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static inline int eight_digits(uint64_t v) {
    return (((v & 0xF0F0F0F0F0F0F0F0ULL) | (((v + 0x0606060606060606ULL) & 0xF0F0F0F0F0F0F0F0ULL) >> 4)) ==
            0x3333333333333333ULL);
}

static inline uint64_t eight_value(uint64_t v) {
    v -= 0x3030303030303030ULL;
    v = (v * 10) + (v >> 8); /* pairs of digits */
    return (((v & 0x000000FF000000FFULL) * 0x000F424000000064ULL) +
            (((v >> 16) & 0x000000FF000000FFULL) * 0x0000271000000001ULL)) >>
           32;
}

/* Appends a run of eight digits to m, only while sig + 8 <= 19 so that m stays below 10^19 < 2^64. sig counts
 * significant digits or overcounts them (leading zeros inside the run): an overcount only sends a long number to
 * strtod sooner, never changes a value. */
static inline int take_eight(const char **p, const char *end, uint64_t *m, int *sig) {
    if (*sig > 11 || end - *p < 8) return 0;
    uint64_t v = load8(*p);
    if (!eight_digits(v)) return 0;
    uint64_t x = eight_value(v);
    if (*m || x) *sig += 8;
    *m = *m * 100000000ULL + x;
    *p += 8;
    return 1;
}
#define MAX_TOKEN 128

/* Parses the number that starts at p (it may not run past end), sets *stop to the first character after it and
 * returns 0; returns -1 when no plain decimal number starts there. Its value is (*num * *mul) / *den with exactly one
 * rounding: the caller does that arithmetic for a whole row at once, where it vectorises.
 *
 * When the significant digits form an integer m <= 2^53 and the decimal exponent e has |e| <= 22, both m and 10^|e|
 * are exact doubles, so one IEEE multiplication or division gives the correctly rounded value (Clinger's fast path):
 * num = ±m and mul = 10^e or den = 10^-e, the other 1. Any other number goes to strtod, which glibc rounds correctly
 * too: num = its value, mul = den = 1. */
static int parse_number(const char *p, const char *end, double *num, double *mul, double *den, const char **stop) {
    const char *start = p;
    int negative = 0;
    if (p < end && (*p == '-' || *p == '+')) {
        negative = *p == '-';
        p++;
    }
    uint64_t m = 0;
    int sig = 0;        /* significant digits in m (leading zeros excluded) */
    int digits = 0;     /* mantissa digits seen, zeros included */
    int dropped = 0;    /* integer-part digits that did not fit in m: each multiplies by 10 */
    int frac_used = 0;  /* fractional digits that went into m: each divides by 10 */
    int exact = 1;      /* m holds every nonzero digit */
    while (take_eight(&p, end, &m, &sig)) digits += 8;
    while (p < end && (unsigned)(*p - '0') < 10) {
        int d = *p - '0';
        if (sig < 19) {
            m = m * 10 + (uint64_t)d;
            sig += m != 0;
        } else {
            dropped++;
            exact &= d == 0;
        }
        digits++;
        p++;
    }
    if (p < end && *p == '.') {
        p++;
        while (take_eight(&p, end, &m, &sig)) {
            digits += 8;
            frac_used += 8;
        }
        while (p < end && (unsigned)(*p - '0') < 10) {
            int d = *p - '0';
            if (sig < 19) {
                m = m * 10 + (uint64_t)d;
                sig += m != 0;
                frac_used++;
            } else {
                exact &= d == 0;
            }
            digits++;
            p++;
        }
    }
    if (digits == 0) return -1;
    long exp10 = 0;
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        int eneg = 0;
        if (p < end && (*p == '-' || *p == '+')) {
            eneg = *p == '-';
            p++;
        }
        int edigits = 0;
        while (p < end && (unsigned)(*p - '0') < 10) {
            if (exp10 < 100000) exp10 = exp10 * 10 + (*p - '0');
            edigits++;
            p++;
        }
        if (edigits == 0) return -1;
        if (eneg) exp10 = -exp10;
    }
    *stop = p;
    *mul = *den = 1.0;
    if (m == 0 && exact) {
        *num = negative ? -0.0 : 0.0;
        return 0;
    }
    long e = exp10 + dropped - frac_used;
    if (exact && m <= TWO53 && e >= -22 && e <= 22) {
        *num = negative ? -(double)m : (double)m;
        if (e < 0)
            *den = POW10[-e];
        else
            *mul = POW10[e];
        return 0;
    }
    /* the rare long or far-out number: strtod on a NUL-terminated copy (the C locale's decimal point is '.') */
    size_t len = (size_t)(p - start);
    if (len >= MAX_TOKEN) return -1;
    char buf[MAX_TOKEN];
    memcpy(buf, start, len);
    buf[len] = '\0';
    char *buf_stop;
    *num = strtod(buf, &buf_stop);
    return buf_stop == buf + len ? 0 : -1;
}

/* Rows and columns of the table, or -1 when it is not a plain rectangle (checked fully during the parse). */
static int shape(const char *s, Py_ssize_t n, char delim, Py_ssize_t *rows, Py_ssize_t *cols) {
    if (n == 0) return -1;
    Py_ssize_t c = 1;
    const char *p = s, *end = s + n;
    while (p < end && *p != '\n') {
        if (*p == delim) c++;
        p++;
    }
    Py_ssize_t r = 0;
    p = s;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        r++;
        if (nl == NULL) break;
        p = nl + 1;
    }
    *rows = r;
    *cols = c;
    return 0;
}

/* Fills out (rows x cols, row-major). Returns 0, -1 at the first thing outside the grammar (a field that is not a
 * number, a row with too few or too many fields, a blank line, which pandas would skip, a stray character), or -2
 * when out of memory. */
static int parse_table(const char *s, Py_ssize_t n, char delim, Py_ssize_t rows, Py_ssize_t cols, float *out) {
    const char *p = s, *end = s + n, *q;
    double *num = malloc(3 * (size_t)cols * sizeof(double));
    if (num == NULL) return -2;
    double *mul = num + cols, *den = mul + cols;
    int status = 0;
    for (Py_ssize_t r = 0; r < rows && status == 0; r++) {
        for (Py_ssize_t c = 0; c < cols; c++) {
            if (parse_number(p, end, num + c, mul + c, den + c, &q) != 0) {
                status = -1;
                break;
            }
            if (c + 1 < cols) {
                if (q >= end || *q != delim) {
                    status = -1;
                    break;
                }
                p = q + 1;
            } else {
                if (q < end && *q == '\r') q++;
                if (q < end && *q++ != '\n') {
                    status = -1;
                    break;
                }
                p = q;
            }
        }
        if (status != 0) break;
        for (Py_ssize_t c = 0; c < cols; c++) out[c] = (float)((num[c] * mul[c]) / den[c]);
        out += cols;
    }
    free(num);
    if (status == 0 && p != end) status = -1;
    return status;
}

static PyObject *parse(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer data;
    int delim;
    if (!PyArg_ParseTuple(args, "y*C", &data, &delim)) return NULL;
    if (delim > 127 || (delim >= '0' && delim <= '9') || delim == '.' || delim == '-' || delim == '+' ||
        delim == 'e' || delim == 'E' || delim == '\n' || delim == '\r') {
        PyBuffer_Release(&data);
        Py_RETURN_NONE;
    }
    const char *s = (const char *)data.buf;
    Py_ssize_t n = data.len, rows = 0, cols = 0;
    int ok;
    Py_BEGIN_ALLOW_THREADS
    ok = shape(s, n, (char)delim, &rows, &cols);
    Py_END_ALLOW_THREADS
    if (ok != 0 || rows > PY_SSIZE_T_MAX / 4 / cols) {
        PyBuffer_Release(&data);
        Py_RETURN_NONE;
    }
    PyObject *out = PyByteArray_FromStringAndSize(NULL, rows * cols * (Py_ssize_t)sizeof(float));
    if (out == NULL) {
        PyBuffer_Release(&data);
        return NULL;
    }
    float *values = (float *)PyByteArray_AS_STRING(out);
    Py_BEGIN_ALLOW_THREADS
    ok = parse_table(s, n, (char)delim, rows, cols, values);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    if (ok != 0) {
        Py_DECREF(out);
        if (ok == -2) return PyErr_NoMemory();
        Py_RETURN_NONE;
    }
    return Py_BuildValue("(Nnn)", out, rows, cols);
}

/* ------------------------------------------------------------------------------------------- task files */
/* The benchmark's task files: a header line, then rows whose columns are sequence names ('s': letters, digits,
 * '_', '.', '-') or non-negative integers ('i': at most 18 digits), comma-separated. Names are interned in order of
 * first appearance, so a column comes back as int32 codes into a short list of names. */

typedef struct {
    const char *ptr;
    Py_ssize_t len;
} Name;

typedef struct {
    Name *names;        /* distinct names, by code */
    Py_ssize_t count;
    Py_ssize_t cap;
    int32_t *slots;     /* open addressing: code + 1, 0 = empty */
    Py_ssize_t nslots;  /* a power of two, kept over twice count */
} Interner;

static uint64_t hash_bytes(const char *p, Py_ssize_t n) {
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (Py_ssize_t i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * 1099511628211ULL;
    return h;
}

static int interner_grow(Interner *t) {
    Py_ssize_t nslots = t->nslots ? t->nslots * 2 : 256;
    int32_t *slots = calloc((size_t)nslots, sizeof(int32_t));
    if (slots == NULL) return -1;
    for (Py_ssize_t c = 0; c < t->count; c++) {
        uint64_t h = hash_bytes(t->names[c].ptr, t->names[c].len) & (uint64_t)(nslots - 1);
        while (slots[h]) h = (h + 1) & (uint64_t)(nslots - 1);
        slots[h] = (int32_t)(c + 1);
    }
    free(t->slots);
    t->slots = slots;
    t->nslots = nslots;
    return 0;
}

/* The code of [p, p + n), added when new; -1 when out of memory or past int32. */
static int32_t intern(Interner *t, const char *p, Py_ssize_t n) {
    if (2 * (t->count + 1) > t->nslots && interner_grow(t) != 0) return -1;
    uint64_t mask = (uint64_t)(t->nslots - 1), h = hash_bytes(p, n) & mask;
    while (t->slots[h]) {
        Name *e = &t->names[t->slots[h] - 1];
        if (e->len == n && memcmp(e->ptr, p, (size_t)n) == 0) return t->slots[h] - 1;
        h = (h + 1) & mask;
    }
    if (t->count == t->cap) {
        Py_ssize_t cap = t->cap ? t->cap * 2 : 64;
        if (cap > INT32_MAX - 1) return -1;
        Name *names = realloc(t->names, (size_t)cap * sizeof(Name));
        if (names == NULL) return -1;
        t->names = names;
        t->cap = cap;
    }
    t->names[t->count].ptr = p;
    t->names[t->count].len = n;
    t->slots[h] = (int32_t)(t->count + 1);
    return (int32_t)t->count++;
}

static int name_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
           c == '-';
}

/* Parses the rows after the header into the columns' buffers. Returns 0, or -1 at anything outside the grammar
 * (-2 when out of memory). */
static int parse_rows(const char *p, const char *end, const char *kinds, int ncols, Py_ssize_t rows, void **cols,
                      Interner *interners) {
    for (Py_ssize_t r = 0; r < rows; r++) {
        for (int c = 0; c < ncols; c++) {
            const char *f = p;
            if (kinds[c] == 'i') {
                int64_t v = 0;
                int nd = 0;
                while (f < end && (unsigned)(*f - '0') < 10) {
                    if (++nd > 18) return -1;
                    v = v * 10 + (*f - '0');
                    f++;
                }
                if (nd == 0) return -1;
                ((int64_t *)cols[c])[r] = v;
            } else {
                while (f < end && name_char(*f)) f++;
                if (f == p) return -1;
                int32_t code = intern(&interners[c], p, (Py_ssize_t)(f - p));
                if (code < 0) return -2;
                ((int32_t *)cols[c])[r] = code;
            }
            if (c + 1 < ncols) {
                if (f >= end || *f != ',') return -1;
                p = f + 1;
            } else {
                if (f < end && *f == '\r') f++;
                if (f < end && *f++ != '\n') return -1;
                p = f;
            }
        }
    }
    return p == end ? 0 : -1;
}

static PyObject *parse_tasks(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer data;
    const char *kinds;
    if (!PyArg_ParseTuple(args, "y*s", &data, &kinds)) return NULL;
    int ncols = (int)strlen(kinds);
    const char *s = (const char *)data.buf, *end = s + data.len;
    PyObject *out = NULL, *result = NULL, *header = NULL, *columns = NULL;
    void *bufs[64];
    Interner interners[64];
    memset(interners, 0, sizeof(interners));
    int ok = 0;
    if (ncols == 0 || ncols > 64 || strspn(kinds, "is") != (size_t)ncols) goto fallback;
    /* the header: ncols comma-separated names of the same characters as sequence names */
    const char *nl = memchr(s, '\n', (size_t)data.len);
    if (nl == NULL) goto fallback;
    const char *hend = nl > s && nl[-1] == '\r' ? nl - 1 : nl;
    header = PyList_New(0);
    if (header == NULL) goto error;
    for (const char *h = s;;) {
        const char *f = h;
        while (f < hend && name_char(*f)) f++;
        if (f == h) goto fallback;
        PyObject *name = PyUnicode_DecodeASCII(h, f - h, NULL);
        if (name == NULL || PyList_Append(header, name) != 0) {
            Py_XDECREF(name);
            goto error;
        }
        Py_DECREF(name);
        if (f == hend) break;
        if (*f != ',') goto fallback;
        h = f + 1;
    }
    if (PyList_GET_SIZE(header) != ncols) goto fallback;
    const char *body = nl + 1;
    Py_ssize_t rows = 0;
    for (const char *q = body; q < end; rows++) {
        const char *n2 = memchr(q, '\n', (size_t)(end - q));
        if (n2 == NULL) {
            rows++;
            break;
        }
        q = n2 + 1;
    }
    columns = PyList_New(ncols);
    if (columns == NULL) goto error;
    for (int c = 0; c < ncols; c++) {
        Py_ssize_t width = kinds[c] == 'i' ? (Py_ssize_t)sizeof(int64_t) : (Py_ssize_t)sizeof(int32_t);
        PyObject *col = PyByteArray_FromStringAndSize(NULL, rows * width);
        if (col == NULL) goto error;
        PyList_SET_ITEM(columns, c, col);
        bufs[c] = PyByteArray_AS_STRING(col);
    }
    Py_BEGIN_ALLOW_THREADS
    ok = parse_rows(body, end, kinds, ncols, rows, bufs, interners);
    Py_END_ALLOW_THREADS
    if (ok == -2) {
        PyErr_NoMemory();
        goto error;
    }
    if (ok != 0) goto fallback;
    result = PyTuple_New(ncols);
    if (result == NULL) goto error;
    for (int c = 0; c < ncols; c++) {
        PyObject *col = PyList_GET_ITEM(columns, c), *item;
        Py_INCREF(col);
        if (kinds[c] == 'i') {
            item = col;
        } else {
            PyObject *names = PyList_New(interners[c].count);
            if (names == NULL) {
                Py_DECREF(col);
                goto error;
            }
            for (Py_ssize_t k = 0; k < interners[c].count; k++) {
                PyObject *name = PyUnicode_DecodeASCII(interners[c].names[k].ptr, interners[c].names[k].len, NULL);
                if (name == NULL) {
                    Py_DECREF(names);
                    Py_DECREF(col);
                    goto error;
                }
                PyList_SET_ITEM(names, k, name);
            }
            item = Py_BuildValue("(NN)", col, names);
            if (item == NULL) goto error;
        }
        PyTuple_SET_ITEM(result, c, item);
    }
    out = Py_BuildValue("(NnN)", header, rows, result); /* steals header and result */
    header = result = NULL;
    goto done;
fallback:
    out = Py_None;
    Py_INCREF(out);
error: /* out stays NULL, with the exception set */
done:
    Py_XDECREF(result);
    Py_XDECREF(header);
    Py_XDECREF(columns);
    for (int c = 0; c < 64; c++) {
        free(interners[c].names);
        free(interners[c].slots);
    }
    PyBuffer_Release(&data);
    return out;
}

/* ------------------------------------------------------------------------------------------- pair distances */
/* Euclidean distance between rows a[i] and b[i] of one float32 table for a range of pairs, as the benchmark's
 * scipy.spatial.distance.euclidean on float32 descriptors computes it: the difference and the sum of squares in
 * float32, then the square root. Sixteen partial sums (one vector register) make the sum vectorise; the order of
 * a float32 sum differs between implementations anyway (the benchmark's is BLAS's sdot). */
#define AHEAD 8

/* The sweeps below vectorise; the default x86-64 target (SSE2) cannot compare doubles into 64-bit counts or keep
 * sixteen float lanes, so an AVX2 clone is built beside it and chosen at load time where the CPU has it. */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define VECTOR_CLONES
#endif

VECTOR_CLONES
static int pair_distances_range(const float *t1, Py_ssize_t n1, const float *t2, Py_ssize_t n2, Py_ssize_t dim,
                                const int64_t *r1, const int64_t *r2, double *out, Py_ssize_t start, Py_ssize_t stop,
                                int wide) {
    for (Py_ssize_t i = start; i < stop; i++) {
        if (r1[i] < 0 || r1[i] >= n1 || r2[i] < 0 || r2[i] >= n2) return -1;
        if (i + AHEAD < stop) { /* rows are scattered: ask for a later pair's rows while this one is summed */
            const int64_t a = r1[i + AHEAD], b = r2[i + AHEAD];
            if (a >= 0 && a < n1 && b >= 0 && b < n2)
                for (Py_ssize_t d = 0; d < dim; d += 16) {
                    __builtin_prefetch(t1 + a * dim + d);
                    __builtin_prefetch(t2 + b * dim + d);
                }
        }
        const float *x = t1 + r1[i] * dim, *y = t2 + r2[i] * dim;
        if (wide) {
            /* float64, as scipy's cdist on float32 input: the difference of two float32 values and its square are
             * exact in a double, only the sum rounds */
            double acc[8] = {0};
            Py_ssize_t d = 0;
            for (; d + 8 <= dim; d += 8)
                for (int k = 0; k < 8; k++) {
                    double t = (double)x[d + k] - (double)y[d + k];
                    acc[k] += t * t;
                }
            for (int k = 0; d < dim; d++, k++) {
                double t = (double)x[d] - (double)y[d];
                acc[k] += t * t;
            }
            for (int w = 4; w >= 1; w /= 2)
                for (int k = 0; k < w; k++) acc[k] += acc[k + w];
            out[i] = sqrt(acc[0]);
            continue;
        }
        float acc[16] = {0};
        Py_ssize_t d = 0;
        for (; d + 16 <= dim; d += 16)
            for (int k = 0; k < 16; k++) {
                float t = x[d + k] - y[d + k];
                acc[k] += t * t;
            }
        for (int k = 0; d < dim; d++, k++) {
            float t = x[d] - y[d];
            acc[k] += t * t;
        }
        for (int w = 8; w >= 1; w /= 2)
            for (int k = 0; k < w; k++) acc[k] += acc[k + w];
        out[i] = (double)sqrtf(acc[0]);
    }
    return 0;
}

static PyObject *pair_distances(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer table1, rows1, table2, rows2, out;
    Py_ssize_t dim, start, stop;
    int wide;
    if (!PyArg_ParseTuple(args, "y*y*y*y*nw*nnp", &table1, &rows1, &table2, &rows2, &dim, &out, &start, &stop, &wide))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = rows1.len / (Py_ssize_t)sizeof(int64_t), row_bytes = dim * (Py_ssize_t)sizeof(float);
    if (dim <= 0 || table1.len % row_bytes || table2.len % row_bytes || rows2.len != rows1.len ||
        out.len != n * (Py_ssize_t)sizeof(double) || start < 0 || stop > n || start > stop) {
        PyErr_SetString(PyExc_ValueError, "pair_distances: inconsistent buffer sizes");
        goto done;
    }
    int ok;
    Py_BEGIN_ALLOW_THREADS
    ok = pair_distances_range((const float *)table1.buf, table1.len / row_bytes, (const float *)table2.buf,
                              table2.len / row_bytes, dim, (const int64_t *)rows1.buf, (const int64_t *)rows2.buf,
                              (double *)out.buf, start, stop, wide);
    Py_END_ALLOW_THREADS
    if (ok != 0) {
        PyErr_SetString(PyExc_IndexError, "pair_distances: a row index is outside the table");
        goto done;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&table1);
    PyBuffer_Release(&rows1);
    PyBuffer_Release(&table2);
    PyBuffer_Release(&rows2);
    PyBuffer_Release(&out);
    return result;
}

/* ------------------------------------------------------------------------------------------- count ahead */
VECTOR_CLONES
static int64_t count_below(const double *row, Py_ssize_t start, Py_ssize_t stop, double level, int inclusive) {
    int64_t c = 0;
    if (inclusive)
        for (Py_ssize_t j = start; j < stop; j++) c += row[j] <= level;
    else
        for (Py_ssize_t j = start; j < stop; j++) c += row[j] < level;
    return c;
}

/* Retrieval's ranks: out[q, p, k] = how many of the first cuts[k] entries of row q of dd are strictly smaller than
 * pos[q, p] (or smaller or equal with ``inclusive``). cuts must be non-decreasing and at most n. Each segment between
 * two cuts is swept once per positive, a comparison summed per entry, which vectorises. */
static PyObject *count_ahead(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer dd, pos, cuts, out;
    Py_ssize_t q, n, m;
    int inclusive;
    if (!PyArg_ParseTuple(args, "y*nny*ny*pw*", &dd, &q, &n, &pos, &m, &cuts, &inclusive, &out)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t k = cuts.len / (Py_ssize_t)sizeof(int64_t);
    const int64_t *cut = (const int64_t *)cuts.buf;
    int ok = q >= 0 && n >= 0 && m >= 1 && dd.len == q * n * (Py_ssize_t)sizeof(double) &&
             pos.len == q * m * (Py_ssize_t)sizeof(double) && out.len == q * m * k * (Py_ssize_t)sizeof(int64_t);
    for (Py_ssize_t i = 0; ok && i < k; i++) ok = cut[i] >= (i ? cut[i - 1] : 0) && cut[i] <= n;
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "count_ahead: inconsistent sizes or cuts");
        goto done;
    }
    const double *d = (const double *)dd.buf, *ps = (const double *)pos.buf;
    int64_t *o = (int64_t *)out.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t r = 0; r < q; r++) {
        const double *row = d + r * n;
        for (Py_ssize_t p = 0; p < m; p++) {
            const double level = ps[r * m + p];
            int64_t running = 0;
            Py_ssize_t start = 0;
            for (Py_ssize_t i = 0; i < k; i++) {
                running += count_below(row, start, cut[i], level, inclusive);
                start = cut[i];
                o[(r * m + p) * k + i] = running;
            }
        }
    }
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&dd);
    PyBuffer_Release(&pos);
    PyBuffer_Release(&cuts);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"parse", parse, METH_VARARGS,
     "parse(data: bytes, delimiter: str) -> (bytearray of float32, rows, cols) | None\n\n"
     "None when the data is not a plain rectangular table of decimal numbers."},
    {"pair_distances", pair_distances, METH_VARARGS,
     "pair_distances(table1, rows1, table2, rows2, dim, out, start, stop, wide): for start <= i < stop,\n"
     "out[i] = |table1[rows1[i]] - table2[rows2[i]]| (float32 tables of dim columns, int64 rows, float64 out), in\n"
     "float32 arithmetic, or in float64 with wide."},
    {"count_ahead", count_ahead, METH_VARARGS,
     "count_ahead(dd: float64 (q, n), q, n, pos: float64 (q, m), m, cuts: int64 (k,), inclusive, out: int64 (q, m, k)):\n"
     "out[r, p, i] = #{j < cuts[i]: dd[r, j] < pos[r, p]} (<= with inclusive)."},
    {"parse_tasks", parse_tasks, METH_VARARGS,
     "parse_tasks(data: bytes, kinds: str) -> (header, rows, columns) | None\n\n"
     "kinds: one letter per column, 'i' for a non-negative integer, 's' for a sequence name. An 'i' column comes back\n"
     "as a bytearray of int64, an 's' column as (bytearray of int32 codes, names in order of first appearance).\n"
     "None when the data is outside that grammar."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }
