/* The binlog row decoder of transform/rowcodec.py, compiled (pure: bytes in, Python values out).
 *
 * rowcodec.compile_decoder works out a plan per table map: for each column its kind and widths,
 * its name and its Python codec. The generated Python decoder and this one walk the same plan and
 * return the same values and the same reasons (tests/unit/test_rowcodec.py and
 * tests/integration/test_rowcodec.py run every case through both); rowcodec.py documents the
 * semantics. Only the walk is here: text goes through Python's own codecs, decimals through
 * decimal.Decimal of the digit string the Python decoder builds, so values can't drift apart.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>
#include <stdint.h>
#include <string.h>

/* Column kinds: rowcodec.py's K_* constants. */
enum { K_INT = 1, K_FLOAT, K_DECIMAL, K_TEXT, K_BYTES, K_DATE, K_DATETIME2, K_TIMESTAMP2 };

typedef struct {
    int kind;
    int a;          /* K_INT, K_FLOAT: bytes; K_DECIMAL: precision; K_TEXT, K_BYTES: length prefix bytes; fsp */
    int b;          /* K_INT: signed; K_DECIMAL: scale */
    PyObject *name; /* str */
    char *encoding; /* K_TEXT */
} Col;

typedef struct {
    PyObject_HEAD
    Py_ssize_t n;
    Col *cols;
} Decoder;

static PyObject *Decimal;   /* decimal.Decimal */

static const int DIG2BYTES[10] = {0, 1, 1, 2, 2, 3, 3, 4, 4, 4};

static void free_plan(Decoder *self) {
    for (Py_ssize_t i = 0; i < self->n; i++) {
        Py_XDECREF(self->cols[i].name);
        PyMem_Free(self->cols[i].encoding);
    }
    PyMem_Free(self->cols);
    self->cols = NULL;
    self->n = 0;
}

static void Decoder_dealloc(Decoder *self) {
    free_plan(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Decoder(plan): plan is a sequence of (kind, a, b, name, encoding). */
/* Is a step within what the walk handles? A table map's metadata comes from the wire: a DECIMAL
 * of precision 144 overran read_decimal's buffers. Held equal to rowcodec.step_error. */
static int step_in_range(const Col *c) {
    int a = c->a, b = c->b;
    switch (c->kind) {
    case K_INT: return (a == 1 || a == 2 || a == 3 || a == 4 || a == 8) && (b == 0 || b == 1);
    case K_FLOAT: return (a == 4 || a == 8) && b == 0;
    case K_DECIMAL: return a >= 1 && a <= 65 && b >= 0 && b <= (a < 30 ? a : 30);
    case K_TEXT: case K_BYTES: return a >= 1 && a <= 4;
    default: return a >= 0 && a <= 6;
    }
}

static int Decoder_init(Decoder *self, PyObject *args, PyObject *kwds) {
    PyObject *plan;
    if (!PyArg_ParseTuple(args, "O", &plan)) return -1;
    PyObject *seq = PySequence_Fast(plan, "a plan is a sequence of column steps");
    if (!seq) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n == 0) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "a plan has at least one column");
        return -1;
    }
    free_plan(self);  /* __init__ called again: the old plan goes */
    self->cols = PyMem_Calloc(n, sizeof(Col));
    if (!self->cols) { Py_DECREF(seq); PyErr_NoMemory(); return -1; }
    self->n = n;
    for (Py_ssize_t i = 0; i < n; i++) {
        Col *c = &self->cols[i];
        const char *encoding;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "iiiUs", &c->kind, &c->a, &c->b, &c->name,
                              &encoding)) {
            Py_DECREF(seq);
            return -1;
        }
        Py_INCREF(c->name);
        c->encoding = PyMem_Malloc(strlen(encoding) + 1);
        if (!c->encoding) { Py_DECREF(seq); PyErr_NoMemory(); return -1; }
        strcpy(c->encoding, encoding);
        if (c->kind < K_INT || c->kind > K_TIMESTAMP2) {
            Py_DECREF(seq);
            PyErr_Format(PyExc_ValueError, "column %R: unknown kind %d", c->name, c->kind);
            return -1;
        }
        if (!step_in_range(c)) {  /* the same ranges as rowcodec.step_error */
            Py_DECREF(seq);
            PyErr_Format(PyExc_ValueError, "column %R: kind %d with (%d, %d) is out of range", c->name, c->kind,
                         c->a, c->b);
            return -1;
        }
    }
    Py_DECREF(seq);
    return 0;
}

static uint64_t be(const unsigned char *p, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v = v << 8 | p[i];
    return v;
}

static uint64_t le(const unsigned char *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

static int64_t sign_extend(uint64_t v, int bytes) {
    if (bytes < 8 && (v >> (8 * bytes - 1) & 1)) return (int64_t)(v | (~(uint64_t)0 << (8 * bytes)));
    return (int64_t)v;
}

/* The reason of a value staging can't hold, as the Python decoder words it. */
static PyObject *zero_date(PyObject *name, const char *shown) {
    return PyUnicode_FromFormat("column %R: MySQL zero or invalid date '%s' has no PostgreSQL form", name, shown);
}

/* MySQL's binary DECIMAL -> the same digit string as rowcodec._decimal_reader -> Decimal. */
static PyObject *read_decimal(const unsigned char *src, int precision, int scale, int width) {
    unsigned char raw[64];
    char text[160];
    int integral = precision - scale, whole_int = integral / 9, lead = integral % 9;
    int whole_frac = scale / 9, trail = scale % 9;
    int lead_size = DIG2BYTES[lead], trail_size = DIG2BYTES[trail];
    memcpy(raw, src, width);
    int negative = !(raw[0] & 0x80);
    raw[0] ^= 0x80;
    int64_t mask = negative ? -1 : 0;
    int q = 0, t = 0;
    if (negative) text[t++] = '-';
    if (lead_size) {
        t += snprintf(text + t, sizeof text - t, "%lld", (long long)(sign_extend(be(raw + q, lead_size), lead_size) ^ mask));
        q += lead_size;
    }
    for (int i = 0; i < whole_int; i++, q += 4)
        t += snprintf(text + t, sizeof text - t, "%09lld", (long long)(sign_extend(be(raw + q, 4), 4) ^ mask));
    text[t++] = '.';
    for (int i = 0; i < whole_frac; i++, q += 4)
        t += snprintf(text + t, sizeof text - t, "%09lld", (long long)(sign_extend(be(raw + q, 4), 4) ^ mask));
    if (trail_size)
        t += snprintf(text + t, sizeof text - t, "%0*lld", trail,
                      (long long)(sign_extend(be(raw + q, trail_size), trail_size) ^ mask));
    return PyObject_CallFunction(Decimal, "s#", text, (Py_ssize_t)t);
}

static int decimal_width(int precision, int scale) {
    int integral = precision - scale;
    return DIG2BYTES[integral % 9] + 4 * (integral / 9) + 4 * (scale / 9) + DIG2BYTES[scale % 9];
}

/* days since 1970-01-01 -> civil date (Howard Hinnant's days_from_civil, inverted). */
static void civil(int64_t z, int *y, int *m, int *d) {
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = (int)(yoe + era * 400 + (*m <= 2));
}

/* The fractional part of a temporal value: (fsp + 1) / 2 bytes, in microseconds. */
static int64_t fraction(const unsigned char *p, int fsp) {
    int size = (fsp + 1) / 2;
    if (!size) return 0;
    int64_t div = fsp % 2 ? 10 : 1, mul = 1;
    for (int i = fsp; i < 6; i++) mul *= 10;
    return (int64_t)be(p, size) / div * mul;
}

/* One value: sets *value (new reference) or *reason (new reference, value None); returns the
 * bytes it took, or -1 with an exception set (a row image cut short, or out of memory). */
static Py_ssize_t read_value(Col *c, const unsigned char *p, Py_ssize_t left, PyObject **value, PyObject **reason) {
    Py_ssize_t need;
    *value = NULL;
    *reason = NULL;
    switch (c->kind) {
    case K_INT:
        need = c->a;
        if (left < need) goto short_image;
        *value = c->b ? PyLong_FromLongLong(sign_extend(le(p, c->a), c->a)) : PyLong_FromUnsignedLongLong(le(p, c->a));
        return *value ? need : -1;
    case K_FLOAT:
        need = c->a;
        if (left < need) goto short_image;
        {
            double f = c->a == 4 ? PyFloat_Unpack4((const char *)p, 1) : PyFloat_Unpack8((const char *)p, 1);
            if (f == -1.0 && PyErr_Occurred()) return -1;
            *value = PyFloat_FromDouble(f);
        }
        return *value ? need : -1;
    case K_DECIMAL:
        need = decimal_width(c->a, c->b);
        if (left < need || need > 64) goto short_image;
        *value = read_decimal(p, c->a, c->b, (int)need);
        return *value ? need : -1;
    case K_TEXT:
    case K_BYTES: {
        if (left < c->a) goto short_image;
        Py_ssize_t n = (Py_ssize_t)le(p, c->a);
        need = c->a + n;
        if (left < need) goto short_image;
        if (c->kind == K_BYTES) {
            *value = PyBytes_FromStringAndSize((const char *)p + c->a, n);
            return *value ? need : -1;
        }
        PyObject *s = PyUnicode_Decode((const char *)p + c->a, n, c->encoding, NULL);
        if (!s) {
            if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) return -1;
            PyObject *type, *exc, *tb;
            PyErr_Fetch(&type, &exc, &tb);
            PyErr_NormalizeException(&type, &exc, &tb);
            *reason = PyUnicode_FromFormat("column %R: %S", c->name, exc);
            Py_XDECREF(type);
            Py_XDECREF(exc);
            Py_XDECREF(tb);
            return *reason ? need : -1;
        }
        Py_ssize_t nul = PyUnicode_FindChar(s, 0, 0, PyUnicode_GET_LENGTH(s), 1);
        if (nul == -2) {
            Py_DECREF(s);
            return -1;
        }
        if (nul >= 0) {
            Py_DECREF(s);
            *reason = PyUnicode_FromFormat("column %R: text contains a NUL character", c->name);
            return *reason ? need : -1;
        }
        *value = s;
        return need;
    }
    case K_DATE: {
        need = 3;
        if (left < need) goto short_image;
        uint64_t v = le(p, 3);
        *value = PyDate_FromDate((int)(v >> 9), (int)(v >> 5 & 15), (int)(v & 31));
        break;
    }
    case K_DATETIME2: {
        need = 5 + (c->a + 1) / 2;
        if (left < need) goto short_image;
        uint64_t packed = be(p, 5);
        uint64_t ym = packed >> 22 & 0x1FFFF;
        int64_t micro = fraction(p + 5, c->a);
        *value = PyDateTime_FromDateAndTime((int)(ym / 13), (int)(ym % 13), (int)(packed >> 17 & 31),
                                            (int)(packed >> 12 & 31), (int)(packed >> 6 & 63), (int)(packed & 63),
                                            (int)micro);
        break;
    }
    case K_TIMESTAMP2: {
        need = 4 + (c->a + 1) / 2;
        if (left < need) goto short_image;
        int64_t seconds = (int64_t)be(p, 4), micro = fraction(p + 4, c->a);
        if (seconds == 0 && micro == 0) {
            /* TIMESTAMP 0 is MySQL's zero timestamp; its real range starts one second later. */
            *reason = zero_date(c->name, "0000-00-00 00:00:00");
            return *reason ? need : -1;
        }
        int64_t total = seconds * 1000000 + micro;  /* as timedelta(seconds=, microseconds=) carries */
        int64_t secs = total / 1000000, us = total % 1000000, days = secs / 86400, rest = secs % 86400;
        int y, m, d;
        civil(days, &y, &m, &d);
        *value = PyDateTimeAPI->DateTime_FromDateAndTime(y, m, d, (int)(rest / 3600), (int)(rest / 60 % 60),
                                                         (int)(rest % 60), (int)us, PyDateTime_TimeZone_UTC,
                                                         PyDateTimeAPI->DateTimeType);
        return *value ? need : -1;
    }
    default:
        PyErr_SetString(PyExc_ValueError, "unknown column kind");
        return -1;
    }
    /* K_DATE, K_DATETIME2: a date Python refuses is MySQL's zero (or an invalid) date */
    if (*value) return need;
    if (!PyErr_ExceptionMatches(PyExc_ValueError)) return -1;
    PyErr_Clear();
    *reason = zero_date(c->name, "0000-00-00");
    return *reason ? need : -1;
short_image:
    PyErr_Format(PyExc_ValueError, "binlog row image ends inside column %R", c->name);
    return -1;
}

/* decode(body) -> [(row, reason or None), ...]: rowcodec.RowsDecoder. */
static PyObject *Decoder_call(Decoder *self, PyObject *args, PyObject *kwds) {
    Py_buffer buf;
    if (!PyArg_ParseTuple(args, "y*", &buf)) return NULL;
    const unsigned char *b = buf.buf;
    Py_ssize_t end = buf.len, p = 0, n = self->n, nulls = (n + 7) / 8;
    PyObject *out = NULL;
    if (n == 0) {  /* made by __new__ alone: no plan, and a walk that would never move */
        PyErr_SetString(PyExc_ValueError, "a Decoder without a plan");
        goto fail;
    }
    out = PyList_New(0);
    if (!out) goto fail;
    while (p < end) {
        if (end - p < nulls) {
            PyErr_SetString(PyExc_ValueError, "binlog row image ends inside its null bitmap");
            goto fail;
        }
        const unsigned char *bitmap = b + p;
        p += nulls;
        PyObject *row = PyTuple_New(n), *err = NULL;
        if (!row) goto fail;
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *value, *reason;
            if (bitmap[i / 8] >> (i % 8) & 1) {
                PyTuple_SET_ITEM(row, i, Py_NewRef(Py_None));
                continue;
            }
            Py_ssize_t took = read_value(&self->cols[i], b + p, end - p, &value, &reason);
            if (took < 0) {
                Py_DECREF(row);
                Py_XDECREF(err);
                goto fail;
            }
            p += took;
            if (reason) {
                if (err) Py_DECREF(reason);  /* the first reason is the row's */
                else err = reason;
                value = Py_NewRef(Py_None);
            }
            PyTuple_SET_ITEM(row, i, value);
        }
        PyObject *pair = PyTuple_Pack(2, row, err ? err : Py_None);
        Py_DECREF(row);
        Py_XDECREF(err);
        if (!pair || PyList_Append(out, pair) < 0) {
            Py_XDECREF(pair);
            goto fail;
        }
        Py_DECREF(pair);
    }
    PyBuffer_Release(&buf);
    return out;
fail:
    Py_XDECREF(out);
    PyBuffer_Release(&buf);
    return NULL;
}

static PyTypeObject DecoderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "transform._rowcodec.Decoder",
    .tp_doc = PyDoc_STR("Decoder(plan)(body) -> [(row, reason or None)]: rowcodec.compile_decoder's plan, compiled"),
    .tp_basicsize = sizeof(Decoder),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Decoder_init,
    .tp_dealloc = (destructor)Decoder_dealloc,
    .tp_call = (ternaryfunc)Decoder_call,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_rowcodec", "The binlog row decoder of transform.rowcodec, compiled.", -1, NULL,
};

PyMODINIT_FUNC PyInit__rowcodec(void) {
    PyDateTime_IMPORT;
    if (!PyDateTimeAPI) return NULL;
    PyObject *decimal = PyImport_ImportModule("decimal");
    if (!decimal) return NULL;
    Decimal = PyObject_GetAttrString(decimal, "Decimal");
    Py_DECREF(decimal);
    if (!Decimal || PyType_Ready(&DecoderType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    if (PyModule_AddObjectRef(m, "Decoder", (PyObject *)&DecoderType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
