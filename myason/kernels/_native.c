/* The replay kernels in C: the same functions as myason/kernels/decode.py and flowtable.py.
 *
 * Why a second implementation: a whole-process replay pays numba's import and cache load
 * (about 0.3 s) at every start, as long as metering a million frames takes; this extension
 * loads in a millisecond. The numba kernels stay the oracle: tests/unit/kernels/test_native.py
 * runs both on the same inputs and compares every output array, and the whole-process test
 * compares the records of both builds byte for byte. Only the kernels a replay needs are here
 * (decode, flow table); the TPACKET_V3 walker and the store encoders run in long-lived
 * processes and stay on numba.
 *
 * Rules kept from the numba versions: same argument order, same array dtypes (checked here,
 * since C has no signature check), same return tuples, same arithmetic (uint64 wrap in the
 * hash, uint32 generations, the tick slack). Every kernel releases the GIL while it runs.
 * Built by `python -m myason.kernels` (myason/kernels/native.py), with -DMYASON_SOURCE_TAG set
 * to the hash of this file, so a stale build is never loaded.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef MYASON_SOURCE_TAG
#error "build with -DMYASON_SOURCE_TAG=... (myason/kernels/native.py)"
#endif
#define STR_(x) #x
#define STR(x) STR_(x)

/* myason.kernels.constants (checked against the Python values at load: native.py) */
#define LINKTYPE_NULL 0
#define LINKTYPE_ETHERNET 1
#define LINKTYPE_RAW 101
#define LINKTYPE_LOOP 108
#define LINKTYPE_LINUX_SLL 113
#define LINKTYPE_IPV4 228
#define LINKTYPE_IPV6 229
#define LINKTYPE_LINUX_SLL2 276
#define ETHERTYPE_IPV4 0x0800
#define ETHERTYPE_IPV6 0x86DD
#define ARPHRD_NETLINK 824
#define AF_INET_BSD 2
#define PCAP_MAX_RECORD (256 * 1024)
#define TCP_FIN 0x01
#define TCP_RST 0x04

/* myason.kernels.flowtable */
#define ALIVE 1
#define FIN_SEEN 2
#define NALIVE 0
#define FREE_TOP 1
#define SEQ 2
#define CPOS 3
#define HEAP_N 4
#define PACKETS 5
#define CREATED 6
#define OUT_N 7
#define COUNTS 8
#define CAP 14
#define LIMIT 15
#define HMASK 16
#define CN 17
#define NSTATE 18
#define DONE 0
#define NEED_OUT 1
#define NEED_GROW 2
#define NEED_HEAP 3

/* End reasons: indexes into schema.END_REASONS, set at load by set_reasons(). */
static int64_t R_IDLE = -1, R_ACTIVE, R_FIN, R_RST, R_FULL;

static int is_raw_ip(int64_t lt) { return lt == LINKTYPE_RAW || lt == 12 || lt == 14; }
static int is_vlan_tpid(int64_t et) { return et == 0x8100 || et == 0x88A8 || et == 0x9100 || et == 0x9200 || et == 0x9300; }
static int is_af_inet6_bsd(int64_t f) { return f == 24 || f == 28 || f == 30; }
static int is_ipv6_ext(int64_t nh) { return nh == 0 || nh == 43 || nh == 44 || nh == 51 || nh == 60 || nh == 140; }

/* -- arrays ------------------------------------------------------------------------------- */

enum kind { SINT = 'i', UINT = 'u', FLT = 'f', BOOL = 'b' };

typedef struct {
    Py_buffer view;
    int held;
} arr_t;

/* Fill `a` from obj: C-contiguous, `ndim` dimensions, items of `kind` and `itemsize`, `cols`
 * columns when ndim is 2 (0: any), writable when asked. 0 on success, -1 with TypeError. */
static int get_arr(PyObject *obj, arr_t *a, const char *name, char kind, int itemsize, int ndim,
                   Py_ssize_t cols, int writable)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, &a->view, flags) < 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s: a C-contiguous%s array expected", name, writable ? " writable" : "");
        return -1;
    }
    a->held = 1;
    const char *f = a->view.format ? a->view.format : "B";
    if (*f == '<' || *f == '=' || *f == '@')
        f++;
    char k;
    switch (*f) {
    case 'b': case 'h': case 'i': case 'l': case 'q': k = SINT; break;
    case 'B': case 'H': case 'I': case 'L': case 'Q': k = UINT; break;
    case 'd': k = FLT; break;
    case '?': k = BOOL; break;
    default: k = 0;
    }
    if (k != kind || a->view.itemsize != itemsize || a->view.ndim != ndim || f[1] != '\0'
        || (ndim == 2 && cols && a->view.shape[1] != cols)) {
        PyErr_Format(PyExc_TypeError, "%s: array of %d dimension(s), kind %c, %d-byte items%s expected",
                     name, ndim, kind, itemsize, ndim == 2 && cols ? " and the right columns" : "");
        return -1;
    }
    return 0;
}

static void release(arr_t *a, int n)
{
    for (int i = 0; i < n; i++)
        if (a[i].held) {
            PyBuffer_Release(&a[i].view);
            a[i].held = 0;
        }
}

static Py_ssize_t rows(arr_t *a) { return a->view.shape[0]; }
#define PTR(a, type) ((type *)(a).view.buf)

/* -- decode (myason/kernels/decode.py) ------------------------------------------------------ */

#define OK_ 0
#define SLOW 1

typedef struct {
    uint64_t *kw;
    int64_t *iplen;
    uint8_t *tflags;
    uint16_t *vlans;
} rows_t;

static inline int64_t u16(const uint8_t *b, int64_t p) { return ((int64_t)b[p] << 8) | b[p + 1]; }

static inline void transport(const uint8_t *b, int64_t t, int64_t end, int64_t proto,
                             int64_t *sport, int64_t *dport, int64_t *fl)
{
    *sport = *dport = *fl = 0;
    if (proto == 6) {
        if (t + 20 <= end) { *sport = u16(b, t); *dport = u16(b, t + 2); *fl = b[t + 13]; }
    } else if (proto == 17 || proto == 136) {
        if (t + 8 <= end) { *sport = u16(b, t); *dport = u16(b, t + 2); }
    } else if (proto == 132) {
        if (t + 12 <= end) { *sport = u16(b, t); *dport = u16(b, t + 2); }
    } else if (proto == 1 || proto == 58) {
        if (t + 2 <= end) *dport = u16(b, t);
    }
}

static inline uint64_t be64(const uint8_t *b, int64_t p)
{
    uint64_t r = 0;
    for (int j = 0; j < 8; j++)
        r = (r << 8) | b[p + j];
    return r;
}

static inline uint64_t misc(int64_t sport, int64_t dport, int64_t proto, int64_t tos, int64_t version)
{
    return ((uint64_t)sport << 48) | ((uint64_t)dport << 32) | ((uint64_t)proto << 24)
           | ((uint64_t)tos << 16) | (uint64_t)version;
}

static inline int ipv4(const uint8_t *b, int64_t q, int64_t end, int64_t vlan, Py_ssize_t i, rows_t *r)
{
    if (q + 20 > end)
        return 0;
    int64_t vihl = b[q];
    if (vihl >> 4 != 4)
        return 0;
    int64_t ihl = (vihl & 15) << 2;
    int64_t t = q + ihl;
    if (ihl < 20 || t > end)
        return 0;
    if (u16(b, q + 6) & 0x3FFF)
        return 0;
    int64_t ip_len = u16(b, q + 2), e;
    if (ip_len) {
        e = q + ip_len;
        if (e > end)
            e = end;
    } else {
        ip_len = end - q;
        e = end;
    }
    int64_t proto = b[q + 9], sport, dport, fl;
    transport(b, t, e, proto, &sport, &dport, &fl);
    uint64_t *k = r->kw + 6 * i;
    k[0] = 0;
    k[1] = ((uint64_t)b[q + 12] << 24) | ((uint64_t)b[q + 13] << 16) | ((uint64_t)b[q + 14] << 8) | b[q + 15];
    k[2] = 0;
    k[3] = ((uint64_t)b[q + 16] << 24) | ((uint64_t)b[q + 17] << 16) | ((uint64_t)b[q + 18] << 8) | b[q + 19];
    k[4] = misc(sport, dport, proto, b[q + 1], 4);
    r->iplen[i] = ip_len;
    r->tflags[i] = (uint8_t)fl;
    r->vlans[i] = (uint16_t)vlan;
    return 1;
}

static inline int ipv6(const uint8_t *b, int64_t q, int64_t end, int64_t vlan, Py_ssize_t i, rows_t *r)
{
    if (q + 40 > end || b[q] >> 4 != 6)
        return 0;
    int64_t nh = b[q + 6];
    if (is_ipv6_ext(nh))
        return 0;
    int64_t plen = u16(b, q + 4), t = q + 40, ip_len, e;
    if (plen) {
        ip_len = 40 + plen;
        e = t + plen;
        if (e > end)
            e = end;
    } else {
        ip_len = end - q;
        e = end;
    }
    int64_t sport, dport, fl;
    transport(b, t, e, nh, &sport, &dport, &fl);
    uint64_t *k = r->kw + 6 * i;
    k[0] = be64(b, q + 8);
    k[1] = be64(b, q + 16);
    k[2] = be64(b, q + 24);
    k[3] = be64(b, q + 32);
    k[4] = misc(sport, dport, nh, ((b[q] & 15) << 4) | (b[q + 1] >> 4), 6);
    r->iplen[i] = ip_len;
    r->tflags[i] = (uint8_t)fl;
    r->vlans[i] = (uint16_t)vlan;
    return 1;
}

/* (IP offset, ethertype, vlan) behind the link layer of b[p:p+n]; ethertype 0: slow. */
static inline void link_layer(const uint8_t *b, int64_t p, int64_t n, int64_t lt,
                              int64_t *q, int64_t *et, int64_t *vlan)
{
    *q = *et = *vlan = 0;
    if (lt == LINKTYPE_ETHERNET) {
        if (n < 14)
            return;
        int64_t t = u16(b, p + 12);
        if (is_vlan_tpid(t)) {
            if (n < 18)
                return;
            *q = p + 18; *et = u16(b, p + 16); *vlan = u16(b, p + 14) & 0xFFF;
            return;
        }
        *q = p + 14; *et = t;
        return;
    }
    if (is_raw_ip(lt)) {
        if (n < 1)
            return;
        int64_t v = b[p] >> 4;
        *q = p; *et = v == 4 ? ETHERTYPE_IPV4 : v == 6 ? ETHERTYPE_IPV6 : 0;
        return;
    }
    if (lt == LINKTYPE_IPV4) { *q = p; *et = ETHERTYPE_IPV4; return; }
    if (lt == LINKTYPE_IPV6) { *q = p; *et = ETHERTYPE_IPV6; return; }
    if (lt == LINKTYPE_LINUX_SLL) {
        if (n < 16 || u16(b, p + 2) == ARPHRD_NETLINK)
            return;
        *q = p + 16; *et = u16(b, p + 14);
        return;
    }
    if (lt == LINKTYPE_LINUX_SLL2) {
        if (n < 20 || u16(b, p + 8) == ARPHRD_NETLINK)
            return;
        *q = p + 20; *et = u16(b, p);
        return;
    }
    if (lt == LINKTYPE_NULL || lt == LINKTYPE_LOOP) {
        if (n < 4)
            return;
        int64_t be = ((int64_t)b[p] << 24) | (b[p + 1] << 16) | (b[p + 2] << 8) | b[p + 3], fam;
        if (lt == LINKTYPE_LOOP) {
            fam = be;
        } else {
            /* Host byte order, unknown: a value above 16 bits means the other order. */
            fam = ((int64_t)b[p + 3] << 24) | (b[p + 2] << 16) | (b[p + 1] << 8) | b[p];
            if (fam > 0xFFFF)
                fam = be;
        }
        if (fam == AF_INET_BSD) { *q = p + 4; *et = ETHERTYPE_IPV4; }
        else if (is_af_inet6_bsd(fam)) { *q = p + 4; *et = ETHERTYPE_IPV6; }
    }
}

static inline int frame(const uint8_t *b, int64_t p, int64_t n, int64_t lt, Py_ssize_t i, rows_t *r)
{
    int64_t q, et, vlan;
    link_layer(b, p, n, lt, &q, &et, &vlan);
    if (et == ETHERTYPE_IPV4)
        return ipv4(b, q, p + n, vlan, i, r);
    if (et == ETHERTYPE_IPV6)
        return ipv6(b, q, p + n, vlan, i, r);
    return 0;
}

static inline int64_t u32(const uint8_t *b, int64_t p, int little)
{
    if (little)
        return ((int64_t)b[p + 3] << 24) | (b[p + 2] << 16) | (b[p + 1] << 8) | b[p];
    return ((int64_t)b[p] << 24) | (b[p + 1] << 16) | (b[p + 2] << 8) | b[p + 3];
}

static PyObject *walk_pcap(PyObject *self, PyObject *args)
{
    PyObject *ob, *ots, *okw, *oiplen, *ofl, *ovl, *ost, *ooffs, *olens;
    long long pos, end, lt;
    int little;
    double div;
    if (!PyArg_ParseTuple(args, "OLLpdLOOOOOOOO", &ob, &pos, &end, &little, &div, &lt, &ots, &okw,
                          &oiplen, &ofl, &ovl, &ost, &ooffs, &olens))
        return NULL;
    arr_t a[9] = {{{0}}};
    PyObject *res = NULL;
    if (get_arr(ob, &a[0], "b", UINT, 1, 1, 0, 0) || get_arr(ots, &a[1], "ts", FLT, 8, 1, 0, 1)
        || get_arr(okw, &a[2], "kw", UINT, 8, 2, 6, 1) || get_arr(oiplen, &a[3], "iplen", SINT, 8, 1, 0, 1)
        || get_arr(ofl, &a[4], "tflags", UINT, 1, 1, 0, 1) || get_arr(ovl, &a[5], "vlans", UINT, 2, 1, 0, 1)
        || get_arr(ost, &a[6], "status", UINT, 1, 1, 0, 1) || get_arr(ooffs, &a[7], "offs", SINT, 8, 1, 0, 1)
        || get_arr(olens, &a[8], "lens", SINT, 8, 1, 0, 1))
        goto out;
    Py_ssize_t cap = rows(&a[1]);
    for (int j = 2; j < 9; j++)
        if (rows(&a[j]) < cap) {
            PyErr_SetString(PyExc_ValueError, "walk_pcap: output arrays shorter than ts");
            goto out;
        }
    if (pos < 0 || end > rows(&a[0]) || pos > end) {
        PyErr_SetString(PyExc_ValueError, "walk_pcap: pos/end outside the buffer");
        goto out;
    }
    const uint8_t *b = PTR(a[0], uint8_t);
    double *ts = PTR(a[1], double);
    uint8_t *status = PTR(a[6], uint8_t);
    int64_t *offs = PTR(a[7], int64_t), *lens = PTR(a[8], int64_t);
    rows_t r = {PTR(a[2], uint64_t), PTR(a[3], int64_t), PTR(a[4], uint8_t), PTR(a[5], uint16_t)};
    Py_ssize_t i = 0;
    int64_t stop = -1;
    Py_BEGIN_ALLOW_THREADS
    while (i < cap) {
        if (pos + 16 > end) {
            stop = pos < end ? 2 : 1;
            break;
        }
        int64_t incl = u32(b, pos + 8, little);
        if (incl > PCAP_MAX_RECORD) {
            stop = 3;
            break;
        }
        int64_t start = pos + 16;
        if (start + incl > end) {
            stop = 2;
            break;
        }
        int64_t sec = u32(b, pos, little), frac = u32(b, pos + 4, little);
        ts[i] = (double)sec + (double)frac / div;
        offs[i] = start;
        lens[i] = incl;
        r.kw[6 * i + 5] = 0;
        status[i] = frame(b, start, incl, lt, i, &r) ? OK_ : SLOW;
        pos = start + incl;
        i++;
    }
    if (stop < 0)
        stop = pos >= end ? 1 : 0;
    Py_END_ALLOW_THREADS
    res = Py_BuildValue("(nLL)", i, (long long)pos, (long long)stop);
out:
    release(a, 9);
    return res;
}

static PyObject *decode_frames(PyObject *self, PyObject *args)
{
    PyObject *o[10];
    if (!PyArg_ParseTuple(args, "OOOOOOOOOO", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &o[7], &o[8], &o[9]))
        return NULL;
    arr_t a[10] = {{{0}}};
    PyObject *res = NULL;
    if (get_arr(o[0], &a[0], "b", UINT, 1, 1, 0, 0) || get_arr(o[1], &a[1], "offs", SINT, 8, 1, 0, 0)
        || get_arr(o[2], &a[2], "lens", SINT, 8, 1, 0, 0) || get_arr(o[3], &a[3], "lts", SINT, 8, 1, 0, 0)
        || get_arr(o[4], &a[4], "ifx", SINT, 8, 1, 0, 0) || get_arr(o[5], &a[5], "kw", UINT, 8, 2, 6, 1)
        || get_arr(o[6], &a[6], "iplen", SINT, 8, 1, 0, 1) || get_arr(o[7], &a[7], "tflags", UINT, 1, 1, 0, 1)
        || get_arr(o[8], &a[8], "vlans", UINT, 2, 1, 0, 1) || get_arr(o[9], &a[9], "status", UINT, 1, 1, 0, 1))
        goto out;
    Py_ssize_t n = rows(&a[1]);
    for (int j = 2; j < 10; j++)
        if (rows(&a[j]) < n) {
            PyErr_SetString(PyExc_ValueError, "decode_frames: arrays shorter than offs");
            goto out;
        }
    const uint8_t *b = PTR(a[0], uint8_t);
    const int64_t *offs = PTR(a[1], int64_t), *lens = PTR(a[2], int64_t);
    const int64_t *lts = PTR(a[3], int64_t), *ifx = PTR(a[4], int64_t);
    for (Py_ssize_t i = 0; i < n; i++)
        if (offs[i] < 0 || lens[i] < 0 || offs[i] + lens[i] > rows(&a[0])) {
            PyErr_Format(PyExc_ValueError, "decode_frames: frame %zd outside the buffer", i);
            goto out;
        }
    rows_t r = {PTR(a[5], uint64_t), PTR(a[6], int64_t), PTR(a[7], uint8_t), PTR(a[8], uint16_t)};
    uint8_t *status = PTR(a[9], uint8_t);
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        r.kw[6 * i + 5] = (uint64_t)ifx[i];
        status[i] = frame(b, offs[i], lens[i], lts[i], i, &r) ? OK_ : SLOW;
    }
    Py_END_ALLOW_THREADS
    Py_INCREF(Py_None);
    res = Py_None;
out:
    release(a, 10);
    return res;
}

/* -- flow table (myason/kernels/flowtable.py) ----------------------------------------------- */

typedef struct {
    uint64_t *K, *U, *CA, *OK, *OU;
    double *F, *HK, *P, *OF;
    uint32_t *M, *HS, *OS;
    int32_t *HT, *HR, *FR;
    int64_t *I;
    Py_ssize_t ca_rows, ok_rows, hk_rows;
} table_t;

#define NT 16

/* The array tuple T, checked: kinds, columns, and rows enough for I[CAP], the heap, the output. */
static int get_table(PyObject *tup, arr_t *a, table_t *t)
{
    if (!PyTuple_Check(tup) || PyTuple_GET_SIZE(tup) != NT) {
        PyErr_SetString(PyExc_TypeError, "T: a tuple of 16 arrays expected");
        return -1;
    }
    static const struct { const char *name; char kind; int size, ndim, cols; } spec[NT] = {
        {"K", UINT, 8, 2, 6}, {"U", UINT, 8, 2, 3}, {"F", FLT, 8, 2, 3}, {"M", UINT, 4, 2, 2},
        {"CA", UINT, 8, 2, 2}, {"HT", SINT, 4, 1, 0}, {"HK", FLT, 8, 1, 0}, {"HS", UINT, 4, 2, 2},
        {"HR", SINT, 4, 1, 0}, {"FR", SINT, 4, 1, 0}, {"I", SINT, 8, 1, 0}, {"P", FLT, 8, 1, 0},
        {"OK", UINT, 8, 2, 6}, {"OU", UINT, 8, 2, 2}, {"OF", FLT, 8, 2, 2}, {"OS", UINT, 4, 1, 0}};
    for (int j = 0; j < NT; j++)
        if (get_arr(PyTuple_GET_ITEM(tup, j), &a[j], spec[j].name, spec[j].kind, spec[j].size,
                    spec[j].ndim, spec[j].cols, 1))
            return -1;
    t->K = PTR(a[0], uint64_t); t->U = PTR(a[1], uint64_t); t->F = PTR(a[2], double);
    t->M = PTR(a[3], uint32_t); t->CA = PTR(a[4], uint64_t); t->HT = PTR(a[5], int32_t);
    t->HK = PTR(a[6], double); t->HS = PTR(a[7], uint32_t); t->HR = PTR(a[8], int32_t);
    t->FR = PTR(a[9], int32_t); t->I = PTR(a[10], int64_t); t->P = PTR(a[11], double);
    t->OK = PTR(a[12], uint64_t); t->OU = PTR(a[13], uint64_t); t->OF = PTR(a[14], double);
    t->OS = PTR(a[15], uint32_t);
    t->ca_rows = rows(&a[4]); t->hk_rows = rows(&a[6]); t->ok_rows = rows(&a[12]);
    if (rows(&a[10]) < NSTATE || rows(&a[11]) < 3) {
        PyErr_SetString(PyExc_ValueError, "T: I or P too short");
        return -1;
    }
    int64_t cap = t->I[CAP];
    Py_ssize_t ht = rows(&a[5]);
    if (cap < 0 || rows(&a[0]) < cap || rows(&a[1]) < cap || rows(&a[2]) < cap || rows(&a[3]) < cap
        || rows(&a[9]) < cap || (ht & (ht - 1)) || t->I[HMASK] != ht - 1 || (cap && ht <= cap)
        || rows(&a[7]) < t->hk_rows || rows(&a[8]) < t->hk_rows || rows(&a[13]) < t->ok_rows
        || rows(&a[14]) < t->ok_rows || rows(&a[15]) < t->ok_rows || t->I[HEAP_N] > t->hk_rows
        || t->I[OUT_N] > t->ok_rows || t->I[NALIVE] > cap) {
        PyErr_SetString(PyExc_ValueError, "T: array sizes disagree with the table state I");
        return -1;
    }
    return 0;
}

static inline uint64_t hash6(const uint64_t *k)
{
    uint64_t h = k[0] * 0x9E3779B97F4A7C15ULL + k[1] * 0xC2B2AE3D27D4EB4FULL + k[2] * 0x165667B19E3779F9ULL
                 + k[3] * 0x85EBCA77C2B2AE63ULL + k[4] * 0x27D4EB2F165667C5ULL + k[5] * 0xFF51AFD7ED558CCDULL;
    h ^= h >> 32;
    h *= 0xD6E8FEB86659FD93ULL;
    h ^= h >> 29;
    return h;
}

static inline int same6(const uint64_t *a, const uint64_t *b)
{
    return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4] && a[5] == b[5];
}

/* (slot, table position) of key x; slot -1 and the first empty position if absent. */
static inline int64_t find(table_t *t, int64_t mask, const uint64_t *x, int64_t *pos)
{
    int64_t p = (int64_t)(hash6(x) & (uint64_t)mask);
    for (;;) {
        int64_t s = t->HT[p];
        if (s < 0 || same6(t->K + 6 * s, x)) {
            *pos = p;
            return s;
        }
        p = (p + 1) & mask;
    }
}

static void unhash(table_t *t, int64_t mask, int64_t s)
{
    int64_t p = (int64_t)(hash6(t->K + 6 * s) & (uint64_t)mask);
    while (t->HT[p] != s)
        p = (p + 1) & mask;
    int64_t j = p;
    for (;;) {
        j = (j + 1) & mask;
        int64_t u = t->HT[j];
        if (u < 0)
            break;
        int64_t home = (int64_t)(hash6(t->K + 6 * u) & (uint64_t)mask);
        /* u may move into the hole at p unless its home lies cyclically in (p, j]. */
        if ((p <= j && (home <= p || home > j)) || (p > j && home <= p && home > j)) {
            t->HT[p] = (int32_t)u;
            p = j;
        }
    }
    t->HT[p] = -1;
}

static inline void heap_set(table_t *t, int64_t j, double key, uint32_t s, uint32_t gen)
{
    t->HK[j] = key;
    t->HS[2 * j] = s;
    t->HS[2 * j + 1] = gen;
}

static inline void heap_move(table_t *t, int64_t to, int64_t from)
{
    heap_set(t, to, t->HK[from], t->HS[2 * from], t->HS[2 * from + 1]);
}

static void push(table_t *t, double key, int64_t s, uint32_t gen)
{
    int64_t j = t->I[HEAP_N];
    t->I[HEAP_N] = j + 1;
    while (j > 0) {
        int64_t parent = (j - 1) >> 1;
        if (t->HK[parent] <= key)
            break;
        heap_move(t, j, parent);
        j = parent;
    }
    heap_set(t, j, key, (uint32_t)s, gen);
}

static void pop(table_t *t, uint32_t *s, uint32_t *gen)
{
    *s = t->HS[0];
    *gen = t->HS[1];
    int64_t n = t->I[HEAP_N] - 1;
    t->I[HEAP_N] = n;
    double key = t->HK[n];
    uint32_t ls = t->HS[2 * n], lg = t->HS[2 * n + 1];
    int64_t j = 0;
    for (;;) {
        int64_t c = 2 * j + 1;
        if (c >= n)
            break;
        if (c + 1 < n && t->HK[c + 1] < t->HK[c])
            c++;
        if (t->HK[c] >= key)
            break;
        heap_move(t, j, c);
        j = c;
    }
    heap_set(t, j, key, ls, lg);
}

static inline int alive(table_t *t, int64_t s) { return (t->M[2 * s] >> 8) & ALIVE; }
static inline double dmin(double a, double b) { return b < a ? b : a; }   /* as Python's min(a, b) */

static inline int64_t reason_of(table_t *t, int64_t s)
{
    /* The rule whose time came first names the end (FlowCache._reason). */
    if (t->F[3 * s + 1] + t->P[1] < t->F[3 * s + 2])
        return R_IDLE;
    return (t->M[2 * s] >> 8) & FIN_SEEN ? R_FIN : R_ACTIVE;
}

static void expire(table_t *t, int64_t s, int64_t reason)
{
    int64_t o = t->I[OUT_N];
    memcpy(t->OK + 6 * o, t->K + 6 * s, 6 * sizeof(uint64_t));
    t->OU[2 * o] = t->U[3 * s];
    t->OU[2 * o + 1] = t->U[3 * s + 1];
    t->OF[2 * o] = t->F[3 * s];
    t->OF[2 * o + 1] = t->F[3 * s + 1];
    uint32_t m = t->M[2 * s];
    t->OS[o] = (uint32_t)((m & 0xFF) | ((m >> 16) << 8) | ((uint64_t)reason << 24));
    t->I[OUT_N] = o + 1;
    t->I[COUNTS + reason] += 1;
    unhash(t, t->I[HMASK], s);
    t->M[2 * s] = 0;
    t->M[2 * s + 1] += 1;      /* heap entries of this flow are stale from now on */
    t->FR[t->I[FREE_TOP]] = (int32_t)s;
    t->I[FREE_TOP] += 1;
    t->I[NALIVE] -= 1;
}

typedef struct { uint64_t touched; int64_t slot; } cand_t;

static int cmp_cand(const void *a, const void *b)
{
    uint64_t x = ((const cand_t *)a)->touched, y = ((const cand_t *)b)->touched;
    return x < y ? -1 : x > y;
}

/* The k smallest of c[0..n) by touched into c[0..k) (quickselect; touched values are unique). */
static void select_k(cand_t *c, int64_t n, int64_t k)
{
    int64_t lo = 0, hi = n - 1;
    while (lo < hi) {
        uint64_t pivot = c[lo + (hi - lo) / 2].touched;
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (c[i].touched < pivot) i++;
            while (c[j].touched > pivot) j--;
            if (i <= j) {
                cand_t tmp = c[i]; c[i] = c[j]; c[j] = tmp;
                i++; j--;
            }
        }
        if (k - 1 <= j) hi = j;
        else if (k - 1 >= i) lo = i;
        else break;
    }
}

/* The oldest flows by last update, oldest first, as eviction candidates (touched, slot): the
 * oldest candidate not updated since is the global LRU. -1 when out of memory. */
static int refill(table_t *t)
{
    int64_t cap = t->I[CAP], n = 0;
    cand_t *c = malloc(sizeof(cand_t) * (size_t)(t->I[NALIVE] > 0 ? t->I[NALIVE] : 1));
    if (!c)
        return -1;
    for (int64_t s = 0; s < cap; s++)
        if (alive(t, s)) {
            c[n].touched = t->U[3 * s + 2];
            c[n].slot = s;
            n++;
        }
    int64_t k = t->ca_rows < n ? t->ca_rows : n;
    if (k < n)
        select_k(c, n, k);
    qsort(c, (size_t)k, sizeof(cand_t), cmp_cand);
    for (int64_t j = 0; j < k; j++) {
        t->CA[2 * j] = c[j].touched;
        t->CA[2 * j + 1] = (uint64_t)c[j].slot;
    }
    free(c);
    t->I[CPOS] = 0;
    t->I[CN] = k;
    return 0;
}

static int evict(table_t *t)
{
    for (;;) {
        if (t->I[CPOS] >= t->I[CN] && refill(t) < 0)
            return -1;
        uint64_t touched = t->CA[2 * t->I[CPOS]];
        int64_t s = (int64_t)t->CA[2 * t->I[CPOS] + 1];
        t->I[CPOS] += 1;
        /* A candidate updated (or freed and reused) since it was chosen is stale. */
        if (alive(t, s) && t->U[3 * s + 2] == touched) {
            expire(t, s, R_FULL);
            return 0;
        }
    }
}

/* A new flow for key x (FlowCache._new); p is its table position unless moved. -1: no memory. */
static int64_t new_flow(table_t *t, double ts, const uint64_t *x, uint16_t vlan, int64_t p, int moved)
{
    if (t->I[NALIVE] >= t->I[LIMIT]) {
        if (evict(t) < 0)
            return -1;
        moved = 1;
    }
    if (moved)
        find(t, t->I[HMASK], x, &p);   /* deleting shifted entries of the table */
    t->I[FREE_TOP] -= 1;
    int64_t s = t->FR[t->I[FREE_TOP]];
    t->HT[p] = (int32_t)s;
    memcpy(t->K + 6 * s, x, 6 * sizeof(uint64_t));
    t->U[3 * s] = 0;
    t->U[3 * s + 1] = 0;
    t->F[3 * s] = ts;
    t->F[3 * s + 1] = ts;
    t->F[3 * s + 2] = ts + t->P[0];
    t->M[2 * s] = (ALIVE << 8) | ((uint32_t)vlan << 16);
    t->I[NALIVE] += 1;
    t->I[CREATED] += 1;
    push(t, dmin(t->F[3 * s + 2], ts + t->P[1]), s, t->M[2 * s + 1]);
    return s;
}

static void fin_rst(table_t *t, double ts, int64_t s, uint8_t fl)
{
    if (fl & TCP_RST) {
        expire(t, s, R_RST);
    } else if (!((t->M[2 * s] >> 8) & FIN_SEEN)) {
        t->M[2 * s] |= (uint32_t)(FIN_SEEN << 8);
        if (t->P[2] <= 0) {
            expire(t, s, R_FIN);
        } else {
            double d = ts + t->P[2];
            if (d < t->F[3 * s + 2]) {
                t->F[3 * s + 2] = d;
                push(t, dmin(d, t->F[3 * s + 1] + t->P[1]), s, t->M[2 * s + 1]);
            }
        }
    }
}

/* FlowCache.tick at now; 0 when the output filled up first (call again at the same now). */
static int tick(table_t *t, double now)
{
    double inactive = t->P[1];
    /* Due times are rounded sums; the slack covers that rounding, the exact test decides. */
    double lim = now + 1e-12 * (fabs(now) + inactive + 1.0);
    int64_t nre = 0;
    int done = 1;
    while (t->I[HEAP_N] > 0 && t->HK[0] <= lim) {
        if (t->I[OUT_N] == t->ok_rows) {
            done = 0;
            break;
        }
        uint32_t s, gen;
        pop(t, &s, &gen);
        if (!alive(t, s) || t->M[2 * s + 1] != gen)
            continue;
        if (t->F[3 * s + 2] < now || (now - t->F[3 * s + 1]) > inactive)
            expire(t, s, reason_of(t, s));
        else
            t->HR[nre++] = (int32_t)s;
    }
    for (int64_t j = 0; j < nre; j++) {
        int64_t s = t->HR[j];
        push(t, dmin(t->F[3 * s + 2], t->F[3 * s + 1] + inactive), s, t->M[2 * s + 1]);
    }
    return done;
}

static PyObject *run(PyObject *self, PyObject *args)
{
    PyObject *oT, *o[8];
    long long i, n, tp;
    if (!PyArg_ParseTuple(args, "OOOOOOOLLOOL", &oT, &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &i, &n,
                          &o[6], &o[7], &tp))
        return NULL;
    arr_t a[NT + 8] = {{{0}}};
    table_t t;
    PyObject *res = NULL;
    if (get_table(oT, a, &t) || get_arr(o[0], &a[NT], "ts", FLT, 8, 1, 0, 0)
        || get_arr(o[1], &a[NT + 1], "X", UINT, 8, 2, 6, 0) || get_arr(o[2], &a[NT + 2], "iplen", SINT, 8, 1, 0, 0)
        || get_arr(o[3], &a[NT + 3], "fl", UINT, 1, 1, 0, 0) || get_arr(o[4], &a[NT + 4], "vlan", UINT, 2, 1, 0, 0)
        || get_arr(o[5], &a[NT + 5], "status", UINT, 1, 1, 0, 0) || get_arr(o[6], &a[NT + 6], "tidx", SINT, 8, 1, 0, 0)
        || get_arr(o[7], &a[NT + 7], "tnow", FLT, 8, 1, 0, 0))
        goto out;
    for (int j = 1; j < 6; j++)
        if (rows(&a[NT + j]) < n) {
            PyErr_SetString(PyExc_ValueError, "run: packet arrays shorter than n");
            goto out;
        }
    if (rows(&a[NT]) < n || i < 0 || tp < 0 || rows(&a[NT + 7]) < rows(&a[NT + 6])) {
        PyErr_SetString(PyExc_ValueError, "run: bad packet range or tick arrays");
        goto out;
    }
    const double *ts = PTR(a[NT], double), *tnow = PTR(a[NT + 7], double);
    const uint64_t *X = PTR(a[NT + 1], uint64_t);
    const int64_t *iplen = PTR(a[NT + 2], int64_t), *tidx = PTR(a[NT + 6], int64_t);
    const uint8_t *fl = PTR(a[NT + 3], uint8_t), *status = PTR(a[NT + 5], uint8_t);
    const uint16_t *vlan = PTR(a[NT + 4], uint16_t);
    int64_t nt = rows(&a[NT + 6]), code = DONE;
    int nomem = 0;
    Py_BEGIN_ALLOW_THREADS
    int64_t *I = t.I;
    int64_t ocap = t.ok_rows, hcap = t.hk_rows, mask = I[HMASK];
    double inactive = t.P[1];
    while (i < n) {
        while (tp < nt && tidx[tp] <= i) {
            if (!tick(&t, tnow[tp])) {
                code = NEED_OUT;
                goto stop;
            }
            tp++;
        }
        if (status[i] == 0) {
            if (ocap - I[OUT_N] < 3) { code = NEED_OUT; goto stop; }
            if (I[FREE_TOP] == 0 && I[CAP] < I[LIMIT]) { code = NEED_GROW; goto stop; }
            if (I[HEAP_N] + 2 > hcap) { code = NEED_HEAP; goto stop; }
            double tt = ts[i];
            I[PACKETS] += 1;
            int64_t p, s = find(&t, mask, X + 6 * i, &p);
            if (s < 0) {
                s = new_flow(&t, tt, X + 6 * i, vlan[i], p, 0);
            } else if (tt > t.F[3 * s + 2] || tt - t.F[3 * s + 1] > inactive || t.F[3 * s] - tt > inactive) {
                /* The last test: a packet from far in the past does not join a flow it cannot belong to. */
                expire(&t, s, reason_of(&t, s));
                s = new_flow(&t, tt, X + 6 * i, vlan[i], p, 1);
            }
            if (s < 0) {
                nomem = 1;
                goto stop;
            }
            t.U[3 * s + 2] = (uint64_t)I[SEQ];      /* the LRU order */
            I[SEQ] += 1;
            t.U[3 * s] += 1;
            t.U[3 * s + 1] += (uint64_t)iplen[i];
            /* first/last are the earliest and latest packet times, also out of order. */
            if (tt > t.F[3 * s + 1])
                t.F[3 * s + 1] = tt;
            else if (tt < t.F[3 * s])
                t.F[3 * s] = tt;
            uint8_t f = fl[i];
            t.M[2 * s] |= (uint32_t)f;
            if (f & (TCP_FIN | TCP_RST))
                fin_rst(&t, tt, s, f);
        }
        i++;
    }
    while (tp < nt) {
        if (!tick(&t, tnow[tp])) {
            code = NEED_OUT;
            goto stop;
        }
        tp++;
    }
stop:
    Py_END_ALLOW_THREADS
    if (nomem)
        PyErr_NoMemory();
    else
        res = Py_BuildValue("(LLL)", i, tp, (long long)code);
out:
    release(a, NT + 8);
    return res;
}

static PyObject *rehash(PyObject *self, PyObject *args)
{
    PyObject *oK, *oM, *oHT;
    long long cap;
    if (!PyArg_ParseTuple(args, "OOOL", &oK, &oM, &oHT, &cap))
        return NULL;
    arr_t a[3] = {{{0}}};
    PyObject *res = NULL;
    if (get_arr(oK, &a[0], "K", UINT, 8, 2, 6, 0) || get_arr(oM, &a[1], "M", UINT, 4, 2, 2, 0)
        || get_arr(oHT, &a[2], "HT", SINT, 4, 1, 0, 1))
        goto out;
    Py_ssize_t ht = rows(&a[2]);
    if (cap < 0 || rows(&a[0]) < cap || rows(&a[1]) < cap || ht == 0 || (ht & (ht - 1)) || ht <= cap) {
        PyErr_SetString(PyExc_ValueError, "rehash: sizes disagree");
        goto out;
    }
    const uint64_t *K = PTR(a[0], uint64_t);
    const uint32_t *M = PTR(a[1], uint32_t);
    int32_t *HT = PTR(a[2], int32_t);
    int64_t mask = ht - 1;
    Py_BEGIN_ALLOW_THREADS
    for (int64_t s = 0; s < cap; s++)
        if ((M[2 * s] >> 8) & ALIVE) {
            int64_t p = (int64_t)(hash6(K + 6 * s) & (uint64_t)mask);
            while (HT[p] >= 0)
                p = (p + 1) & mask;
            HT[p] = (int32_t)s;
        }
    Py_END_ALLOW_THREADS
    Py_INCREF(Py_None);
    res = Py_None;
out:
    release(a, 3);
    return res;
}

typedef struct { double first; int64_t j; } firsts_t;

static int cmp_first(const void *a, const void *b)
{
    const firsts_t *x = a, *y = b;
    if (x->first < y->first) return -1;
    if (x->first > y->first) return 1;
    return x->j < y->j ? -1 : x->j > y->j;    /* stable, as numpy's mergesort */
}

static PyObject *flush_all(PyObject *self, PyObject *args)
{
    PyObject *oT;
    long long reason;
    if (!PyArg_ParseTuple(args, "OL", &oT, &reason))
        return NULL;
    arr_t a[NT] = {{{0}}};
    table_t t;
    PyObject *res = NULL;
    if (get_table(oT, a, &t))
        goto out;
    if (reason < 0 || reason >= CAP - COUNTS || t.ok_rows - t.I[OUT_N] < t.I[NALIVE]) {
        PyErr_SetString(PyExc_ValueError, "flush_all: bad reason or no room for every flow");
        goto out;
    }
    int64_t cap = t.I[CAP], n = 0;
    firsts_t *f = malloc(sizeof(firsts_t) * (size_t)(t.I[NALIVE] > 0 ? t.I[NALIVE] : 1));
    if (!f) {
        PyErr_NoMemory();
        goto out;
    }
    Py_BEGIN_ALLOW_THREADS
    for (int64_t s = 0; s < cap; s++)
        if (alive(&t, s)) {
            f[n].first = t.F[3 * s];
            f[n].j = s;
            n++;
        }
    qsort(f, (size_t)n, sizeof(firsts_t), cmp_first);
    for (int64_t j = 0; j < n; j++)
        expire(&t, f[j].j, reason);
    Py_END_ALLOW_THREADS
    free(f);
    res = PyLong_FromLongLong(n);
out:
    release(a, NT);
    return res;
}

static PyObject *rebuild_heap(PyObject *self, PyObject *args)
{
    PyObject *oT;
    if (!PyArg_ParseTuple(args, "O", &oT))
        return NULL;
    arr_t a[NT] = {{{0}}};
    table_t t;
    PyObject *res = NULL;
    if (get_table(oT, a, &t))
        goto out;
    if (t.I[NALIVE] > t.hk_rows) {
        PyErr_SetString(PyExc_ValueError, "rebuild_heap: heap smaller than the alive flows");
        goto out;
    }
    Py_BEGIN_ALLOW_THREADS
    t.I[HEAP_N] = 0;
    for (int64_t s = 0; s < t.I[CAP]; s++)
        if (alive(&t, s))
            push(&t, dmin(t.F[3 * s + 2], t.F[3 * s + 1] + t.P[1]), s, t.M[2 * s + 1]);
    Py_END_ALLOW_THREADS
    Py_INCREF(Py_None);
    res = Py_None;
out:
    release(a, NT);
    return res;
}

static PyObject *tick_schedule(PyObject *self, PyObject *args)
{
    PyObject *ots, *ost, *otidx, *otnow;
    double now, next_tick, every;
    int started;
    if (!PyArg_ParseTuple(args, "OOddpdOO", &ots, &ost, &now, &next_tick, &started, &every, &otidx, &otnow))
        return NULL;
    arr_t a[4] = {{{0}}};
    PyObject *res = NULL;
    if (get_arr(ots, &a[0], "ts", FLT, 8, 1, 0, 0) || get_arr(ost, &a[1], "status", UINT, 1, 1, 0, 0)
        || get_arr(otidx, &a[2], "tidx", SINT, 8, 1, 0, 1) || get_arr(otnow, &a[3], "tnow", FLT, 8, 1, 0, 1))
        goto out;
    Py_ssize_t n = rows(&a[0]);
    if (rows(&a[1]) < n || rows(&a[2]) < n || rows(&a[3]) < n) {
        PyErr_SetString(PyExc_ValueError, "tick_schedule: arrays shorter than ts");
        goto out;
    }
    const double *ts = PTR(a[0], double);
    const uint8_t *status = PTR(a[1], uint8_t);
    int64_t *tidx = PTR(a[2], int64_t), k = 0;
    double *tnow = PTR(a[3], double);
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        if (status[i] != 0)
            continue;
        double tt = ts[i];
        if (tt > now) {
            now = tt;
            if (now >= next_tick) {
                if (started) {
                    tidx[k] = i;
                    tnow[k] = now;
                    k++;
                }
                next_tick = now + every;
                started = 1;
            }
        }
    }
    Py_END_ALLOW_THREADS
    res = Py_BuildValue("(LddO)", (long long)k, now, next_tick, started ? Py_True : Py_False);
out:
    release(a, 4);
    return res;
}

/* assemble(n, parts): n rows, each the words of every part in order with the zero bytes deleted;
 * a part is a 1-D uint64 array (the same words in every row) or an (n, c) one (c words per row).
 * The bytes fastoutput would get from the (n, width) matrix of all parts through
 * tobytes().translate(None, b"\0"), in one pass without the GIL and without the matrix (a record
 * file's matrix is tens of MB). Not a numba kernel's twin: that translate is the fallback. */
static PyObject *assemble(PyObject *self, PyObject *args)
{
    Py_ssize_t n;
    PyObject *seq;
    if (!PyArg_ParseTuple(args, "nO", &n, &seq))
        return NULL;
    PyObject *fast = PySequence_Fast(seq, "assemble: parts must be a sequence");
    if (fast == NULL)
        return NULL;
    Py_ssize_t np_ = PySequence_Fast_GET_SIZE(fast), width = 0;
    Py_buffer *v = PyMem_Calloc(np_ ? np_ : 1, sizeof(Py_buffer));
    Py_ssize_t *cols = PyMem_Calloc(np_ ? np_ : 1, sizeof(Py_ssize_t));
    int *per_row = PyMem_Calloc(np_ ? np_ : 1, sizeof(int));
    Py_ssize_t held = 0;
    PyObject *out = NULL;
    if (v == NULL || cols == NULL || per_row == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (; held < np_; held++) {
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(fast, held), &v[held],
                               PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
            goto done;
        Py_buffer *b = &v[held];
        if (b->itemsize != 8 || (b->ndim != 1 && b->ndim != 2) || (b->ndim == 2 && b->shape[0] != n)) {
            held++;
            PyErr_Format(PyExc_ValueError, "assemble: part %zd is not 8-byte words of 1 row or %zd rows", held - 1, n);
            goto done;
        }
        per_row[held] = b->ndim == 2;
        cols[held] = b->ndim == 2 ? b->shape[1] : b->shape[0];
        width += cols[held];
    }
    if (n < 0 || (width && n > PY_SSIZE_T_MAX / 8 / width)) {
        PyErr_SetString(PyExc_ValueError, "assemble: bad row count");
        goto done;
    }
    out = PyBytes_FromStringAndSize(NULL, n * width * 8);
    if (out == NULL)
        goto done;
    uint8_t *dst = (uint8_t *)PyBytes_AS_STRING(out);
    Py_ssize_t m = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t r = 0; r < n; r++)
        for (Py_ssize_t p = 0; p < np_; p++) {
            const uint64_t *w = (const uint64_t *)v[p].buf + (per_row[p] ? r * cols[p] : 0);
            for (Py_ssize_t j = 0; j < cols[p]; j++) {
                uint64_t x = w[j];
                while (x) {          /* little-endian words: the low byte is the first */
                    uint8_t c = (uint8_t)x;
                    dst[m] = c;
                    m += c != 0;
                    x >>= 8;
                }
            }
        }
    Py_END_ALLOW_THREADS
    if (_PyBytes_Resize(&out, m) < 0)
        out = NULL;
done:
    for (Py_ssize_t i = 0; i < held; i++)
        if (v[i].obj != NULL)
            PyBuffer_Release(&v[i]);
    PyMem_Free(v);
    PyMem_Free(cols);
    PyMem_Free(per_row);
    Py_DECREF(fast);
    return out;
}

/* set_reasons(idle, active, fin, rst, cache_full): schema.END_REASONS' indexes, from native.py. */
static PyObject *set_reasons(PyObject *self, PyObject *args)
{
    long long v[5];
    if (!PyArg_ParseTuple(args, "LLLLL", &v[0], &v[1], &v[2], &v[3], &v[4]))
        return NULL;
    for (int j = 0; j < 5; j++)
        if (v[j] < 0 || v[j] >= CAP - COUNTS) {
            PyErr_SetString(PyExc_ValueError, "set_reasons: an end reason index outside the counters");
            return NULL;
        }
    R_IDLE = v[0]; R_ACTIVE = v[1]; R_FIN = v[2]; R_RST = v[3]; R_FULL = v[4];
    Py_RETURN_NONE;
}

static PyObject *constants(PyObject *self, PyObject *unused)
{
    return Py_BuildValue("{s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,"
                         "s:(iii),s:(iiiii),s:(iii),s:(iiiiii)}",
        "LINKTYPE_NULL", LINKTYPE_NULL, "LINKTYPE_ETHERNET", LINKTYPE_ETHERNET, "LINKTYPE_RAW", LINKTYPE_RAW,
        "LINKTYPE_LOOP", LINKTYPE_LOOP, "LINKTYPE_LINUX_SLL", LINKTYPE_LINUX_SLL, "LINKTYPE_IPV4", LINKTYPE_IPV4,
        "LINKTYPE_IPV6", LINKTYPE_IPV6, "LINKTYPE_LINUX_SLL2", LINKTYPE_LINUX_SLL2, "ETHERTYPE_IPV4", ETHERTYPE_IPV4,
        "ETHERTYPE_IPV6", ETHERTYPE_IPV6, "ARPHRD_NETLINK", ARPHRD_NETLINK, "AF_INET_BSD", AF_INET_BSD,
        "PCAP_MAX_RECORD", PCAP_MAX_RECORD, "TCP_FIN", TCP_FIN, "TCP_RST", TCP_RST,
        "RAW_IP_LINKTYPES", LINKTYPE_RAW, 12, 14, "VLAN_TPIDS", 0x8100, 0x88A8, 0x9100, 0x9200, 0x9300,
        "AF_INET6_BSD", 24, 28, 30, "IPV6_EXT_HEADERS", 0, 43, 44, 51, 60, 140);
}

static PyObject *flowtable_layout(PyObject *self, PyObject *unused)
{
    return Py_BuildValue("{s:i,s:i,s:(iiiiiiiiiiiii),s:i,s:(iiii)}", "ALIVE", ALIVE, "FIN_SEEN", FIN_SEEN,
        "I", NALIVE, FREE_TOP, SEQ, CPOS, HEAP_N, PACKETS, CREATED, OUT_N, COUNTS, CAP, LIMIT, HMASK, CN,
        "NSTATE", NSTATE, "CODES", DONE, NEED_OUT, NEED_GROW, NEED_HEAP);
}

static PyMethodDef methods[] = {
    {"walk_pcap", walk_pcap, METH_VARARGS, "decode.walk_pcap"},
    {"decode_frames", decode_frames, METH_VARARGS, "decode.decode_frames"},
    {"run", run, METH_VARARGS, "flowtable.run"},
    {"rehash", rehash, METH_VARARGS, "flowtable.rehash"},
    {"flush_all", flush_all, METH_VARARGS, "flowtable.flush_all"},
    {"rebuild_heap", rebuild_heap, METH_VARARGS, "flowtable.rebuild_heap"},
    {"tick_schedule", tick_schedule, METH_VARARGS, "flowtable.tick_schedule"},
    {"assemble", assemble, METH_VARARGS, "rows of words without their zero bytes (fastoutput)"},
    {"set_reasons", set_reasons, METH_VARARGS, "set the end reason indexes (schema.END_REASONS)"},
    {"constants", constants, METH_NOARGS, "the packet constants compiled in (checked by native.py)"},
    {"flowtable_layout", flowtable_layout, METH_NOARGS, "the flow table layout compiled in (checked by native.py)"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native",
                                    "The replay kernels in C (see myason/kernels/native.py).", -1, methods};

PyMODINIT_FUNC PyInit__native(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m && PyModule_AddStringConstant(m, "SOURCE_TAG", STR(MYASON_SOURCE_TAG)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
