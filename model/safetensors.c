/* SPDX-License-Identifier: MIT */
/*
 * safetensors files: a little-endian u64 header length N, N bytes of UTF-8
 * JSON describing the tensors, then the data section. Everything in the file
 * is untrusted: the header is bounded, validated as UTF-8 and strict JSON,
 * and every tensor's dtype, shape and byte range is checked before a pointer
 * into the data is handed out. Also hosts the strict JSON helpers of
 * parse_pvt.h shared with config.c and loader.c.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hr_common.h"
#include "model.h"
#include "parse_pvt.h"

static const struct {
	const char *name;
	enum kern_dtype dtype;
	uint32_t size;
} st_dtypes[] = {
	{ "F32", KERN_F32, 4 },
	{ "BF16", KERN_BF16, 2 },
	{ "F16", KERN_F16, 2 },
};

/* ---------------------------------------------------------------- helpers */

bool model__utf8_valid(const void *buf, size_t len, size_t *ret_bad)
{
	const uint8_t *s = buf;
	size_t i = 0;

	while (i < len) {
		uint8_t c = s[i], lo = 0x80, hi = 0xbf;
		size_t n, k;

		if (c < 0x80) {
			i++;
			continue;
		}
		if (c >= 0xc2 && c <= 0xdf) {
			n = 1;
		} else if (c >= 0xe0 && c <= 0xef) {
			n = 2;
			if (c == 0xe0)
				lo = 0xa0; /* overlong below U+0800 */
			else if (c == 0xed)
				hi = 0x9f; /* U+D800..U+DFFF: surrogates */
		} else if (c >= 0xf0 && c <= 0xf4) {
			n = 3;
			if (c == 0xf0)
				lo = 0x90; /* overlong below U+10000 */
			else if (c == 0xf4)
				hi = 0x8f; /* past U+10FFFF */
		} else {
			goto bad; /* continuation byte, C0/C1 overlong lead, F5..FF */
		}
		if (len - i - 1 < n || s[i + 1] < lo || s[i + 1] > hi)
			goto bad;
		for (k = 2; k <= n; k++)
			if ((s[i + k] & 0xc0) != 0x80)
				goto bad;
		i += n + 1;
	}
	return true;
bad:
	if (ret_bad)
		*ret_bad = i;
	return false;
}

static int cmp_strp(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/*
 * First key that appears twice in obj or any object below it, or NULL.
 * Depth is bounded by cJSON's nesting limit. -ENOMEM on allocation failure.
 */
static int json_find_dup(const cJSON *obj, const char **ret_dup)
{
	const cJSON *c;
	size_t n = 0, i;
	int r;

	for (c = obj->child; c; c = c->next) {
		if (cJSON_IsObject(c) || cJSON_IsArray(c)) {
			r = json_find_dup(c, ret_dup);
			if (r != 0)
				return r;
		}
		n++;
	}
	if (!cJSON_IsObject(obj) || n < 2)
		return 0;
	if (n <= 8) {
		const cJSON *d;

		for (c = obj->child; c; c = c->next)
			for (d = c->next; d; d = d->next)
				if (strcmp(c->string, d->string) == 0) {
					*ret_dup = c->string;
					return 1;
				}
		return 0;
	}

	const char **keys = malloc(n * sizeof(*keys));
	if (!keys)
		return -ENOMEM;
	for (i = 0, c = obj->child; c; c = c->next)
		keys[i++] = c->string;
	qsort(keys, n, sizeof(*keys), cmp_strp);
	r = 0;
	for (i = 1; i < n; i++)
		if (strcmp(keys[i - 1], keys[i]) == 0) {
			*ret_dup = keys[i];
			r = 1;
			break;
		}
	free(keys);
	return r;
}

hr_printf_fmt(3, 4) static void set_msg(char *buf, size_t size, const char *fmt, ...)
{
	va_list ap;

	if (!buf || size == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(buf, size, fmt, ap);
	va_end(ap);
}

cJSON *model__json_parse(const char *buf, size_t len, char *why, size_t whylen)
{
	char esc[MODEL_ESC_MAX];
	const char *end = NULL, *dup = NULL;
	size_t i, bad;
	char *copy;
	cJSON *root;
	int r;

	for (i = 0; i < len; i++) {
		unsigned char c = (unsigned char)buf[i];

		/* JSON allows no raw control character, in strings or out. */
		if (c < 0x20 && c != '\t' && c != '\n' && c != '\r') {
			set_msg(why, whylen, "control byte 0x%02x at offset %zu", c, i);
			goto einval;
		}
		if (c == '\\' && i + 1 < len) {
			if (buf[i + 1] == 'u' && len - i >= 6 && memcmp(buf + i + 2, "0000", 4) == 0) {
				set_msg(why, whylen, "escaped NUL (\\u0000) at offset %zu", i);
				goto einval;
			}
			i++; /* the escaped character cannot start an escape */
		}
	}
	if (!model__utf8_valid(buf, len, &bad)) {
		set_msg(why, whylen, "not valid UTF-8 (byte 0x%02x at offset %zu)",
			(unsigned char)buf[bad], bad);
		goto einval;
	}

	/* cJSON wants a C string; the copy also bounds every read it makes. */
	copy = malloc(len + 1);
	if (!copy)
		goto enomem;
	memcpy(copy, buf, len);
	copy[len] = '\0';
	root = cJSON_ParseWithOpts(copy, &end, 1);
	if (!root) {
		ptrdiff_t off = end ? end - copy : -1;

		free(copy);
		if (off < 0) /* cJSON could not even start: allocation failure */
			goto enomem;
		set_msg(why, whylen, "not valid JSON (offset %td)", off);
		goto einval;
	}
	free(copy);

	r = json_find_dup(root, &dup);
	if (r < 0) {
		cJSON_Delete(root);
		goto enomem;
	}
	if (r > 0) {
		set_msg(why, whylen, "duplicate key '%s'", model__esc(esc, sizeof(esc), dup));
		cJSON_Delete(root);
		goto einval;
	}
	return root;

einval:
	errno = EINVAL;
	return NULL;
enomem:
	set_msg(why, whylen, "out of memory");
	errno = ENOMEM;
	return NULL;
}

bool model__json_uint(const cJSON *item, uint64_t max, uint64_t *ret)
{
	double d;

	if (!cJSON_IsNumber(item))
		return false;
	d = item->valuedouble;
	/* NaN fails every comparison; infinities fail the range check. */
	if (!(d >= 0.0 && d <= (double)MODEL_JSON_MAX_INT))
		return false;
	if (d != floor(d) || (uint64_t)d > max)
		return false;
	*ret = (uint64_t)d;
	return true;
}

const char *model__json_type(const cJSON *item)
{
	if (!item)
		return "missing";
	if (cJSON_IsNull(item))
		return "null";
	if (cJSON_IsBool(item))
		return "a boolean";
	if (cJSON_IsNumber(item))
		return "a number";
	if (cJSON_IsString(item))
		return "a string";
	if (cJSON_IsArray(item))
		return "an array";
	if (cJSON_IsObject(item))
		return "an object";
	return "invalid";
}

const char *model__esc(char *buf, size_t size, const char *s)
{
	static const char hex[] = "0123456789abcdef";
	size_t o = 0;

	if (size == 0)
		return buf;
	for (; s && *s; s++) {
		unsigned char c = (unsigned char)*s;
		size_t need = (c < 0x20 || c == 0x7f) ? 4 : 1;

		/* keep room for "..." and the NUL */
		if (o + need + 4 > size) {
			if (o + 4 <= size) {
				memcpy(buf + o, "...", 3);
				o += 3;
			}
			break;
		}
		if (need == 4) {
			buf[o++] = '\\';
			buf[o++] = 'x';
			buf[o++] = hex[c >> 4];
			buf[o++] = hex[c & 15];
		} else {
			buf[o++] = (char)c;
		}
	}
	buf[o < size ? o : size - 1] = '\0';
	return buf;
}

const char *model__fmt_shape(char *buf, size_t size, const uint64_t *shape, uint32_t n_dims)
{
	size_t o = 0;
	uint32_t i;
	int w;

	if (size == 0)
		return buf;
	buf[0] = '\0';
	w = snprintf(buf, size, "[");
	for (i = 0; w >= 0 && i < n_dims; i++) {
		o += (size_t)w;
		if (o >= size)
			break;
		w = snprintf(buf + o, size - o, "%s%llu", i ? ", " : "",
			     (unsigned long long)shape[i]);
	}
	if (w >= 0 && o + (size_t)w < size)
		snprintf(buf + o + (size_t)w, size - o - (size_t)w, "]");
	return buf;
}

/* ---------------------------------------------------------------- parsing */

struct st_ctx {
	const char *file;   /* for messages */
	const uint8_t *data; /* data section */
	uint64_t data_len;
	char *err;
	size_t errlen;
};

hr_printf_fmt(3, 4) static int st_fail(const struct st_ctx *c, const char *tensor,
				       const char *fmt, ...)
{
	char esc[MODEL_ESC_MAX];
	va_list ap;
	int o;

	if (!c->err || c->errlen == 0)
		return -EINVAL;
	if (tensor)
		o = snprintf(c->err, c->errlen, "%s: tensor '%s': ", c->file,
			     model__esc(esc, sizeof(esc), tensor));
	else
		o = snprintf(c->err, c->errlen, "%s: ", c->file);
	if (o >= 0 && (size_t)o < c->errlen) {
		va_start(ap, fmt);
		vsnprintf(c->err + o, c->errlen - (size_t)o, fmt, ap);
		va_end(ap);
	}
	return -EINVAL;
}

/* Describe a JSON value that should have been an unsigned integer. */
static const char *st_num_desc(char *buf, size_t size, const cJSON *item)
{
	if (cJSON_IsNumber(item))
		snprintf(buf, size, "%.17g", item->valuedouble);
	else
		snprintf(buf, size, "%s", model__json_type(item));
	return buf;
}

static int st_parse_shape(const struct st_ctx *c, const char *name, const cJSON *shape,
			  struct st_tensor *t)
{
	const cJSON *d;
	uint64_t n = 1, v;
	char desc[64];
	int nd;

	if (!shape)
		return st_fail(c, name, "'shape' is missing");
	if (!cJSON_IsArray(shape))
		return st_fail(c, name, "'shape' is %s, not an array", model__json_type(shape));
	nd = cJSON_GetArraySize(shape);
	if (nd > ST_MAX_DIMS)
		return st_fail(c, name, "shape has %d dimensions, more than %d", nd, ST_MAX_DIMS);
	t->n_dims = 0;
	cJSON_ArrayForEach(d, shape) {
		if (!model__json_uint(d, MODEL_JSON_MAX_INT, &v))
			return st_fail(c, name, "shape[%u] (%s) is not a non-negative integer",
				       t->n_dims, st_num_desc(desc, sizeof(desc), d));
		t->shape[t->n_dims++] = v;
	}
	/* Any zero dimension makes the tensor empty, whatever the others are. */
	for (uint32_t i = 0; i < t->n_dims; i++)
		if (t->shape[i] == 0)
			n = 0;
	for (uint32_t i = 0; n && i < t->n_dims; i++)
		if (__builtin_mul_overflow(n, t->shape[i], &n)) {
			char sh[160];

			return st_fail(c, name, "shape %s has too many elements",
				       model__fmt_shape(sh, sizeof(sh), t->shape, t->n_dims));
		}
	t->n_elems = n;
	return 0;
}

static int st_parse_tensor(const struct st_ctx *c, const cJSON *e, struct st_tensor *t)
{
	const char *name = e->string;
	const cJSON *dt, *offs, *b, *en;
	uint64_t begin, end, bytes;
	char sh[160], desc[64];
	uint32_t dsize = 0;
	size_t i;
	int r;

	if (name[0] == '\0')
		return st_fail(c, NULL, "a tensor has an empty name");
	if (!cJSON_IsObject(e))
		return st_fail(c, name, "entry is %s, not an object", model__json_type(e));

	dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
	if (!dt)
		return st_fail(c, name, "'dtype' is missing");
	if (!cJSON_IsString(dt))
		return st_fail(c, name, "'dtype' is %s, not a string", model__json_type(dt));
	for (i = 0; i < HR_ARRAY_SIZE(st_dtypes); i++)
		if (strcmp(dt->valuestring, st_dtypes[i].name) == 0) {
			t->dtype = st_dtypes[i].dtype;
			dsize = st_dtypes[i].size;
		}
	if (dsize == 0) {
		char esc[MODEL_ESC_MAX];

		return st_fail(c, name, "unsupported dtype '%s' (F32, BF16 and F16 are)",
			       model__esc(esc, 32, dt->valuestring));
	}

	r = st_parse_shape(c, name, cJSON_GetObjectItemCaseSensitive(e, "shape"), t);
	if (r < 0)
		return r;

	offs = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
	if (!offs)
		return st_fail(c, name, "'data_offsets' is missing");
	if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2)
		return st_fail(c, name, "'data_offsets' is %s, not a [begin, end] pair",
			       cJSON_IsArray(offs) ? "an array of the wrong length"
						   : model__json_type(offs));
	b = offs->child;
	en = b->next;
	if (!model__json_uint(b, MODEL_JSON_MAX_INT, &begin))
		return st_fail(c, name, "data_offsets begin (%s) is not a non-negative integer",
			       st_num_desc(desc, sizeof(desc), b));
	if (!model__json_uint(en, MODEL_JSON_MAX_INT, &end))
		return st_fail(c, name, "data_offsets end (%s) is not a non-negative integer",
			       st_num_desc(desc, sizeof(desc), en));
	if (begin > end)
		return st_fail(c, name, "data_offsets [%llu, %llu] begin after end",
			       (unsigned long long)begin, (unsigned long long)end);
	if (end > c->data_len)
		return st_fail(c, name,
			       "data_offsets [%llu, %llu] run past the end of the data section (%llu bytes)",
			       (unsigned long long)begin, (unsigned long long)end,
			       (unsigned long long)c->data_len);
	model__fmt_shape(sh, sizeof(sh), t->shape, t->n_dims);
	if (__builtin_mul_overflow(t->n_elems, (uint64_t)dsize, &bytes))
		return st_fail(c, name, "shape %s x %s overflows", sh, dt->valuestring);
	if (bytes != end - begin)
		return st_fail(c, name, "shape %s x %s is %llu bytes but data_offsets span %llu bytes",
			       sh, dt->valuestring, (unsigned long long)bytes,
			       (unsigned long long)(end - begin));

	t->data = c->data + begin;
	t->n_bytes = bytes;
	t->name = strdup(name);
	if (!t->name)
		return -ENOMEM;
	return 0;
}

static int cmp_offset(const void *pa, const void *pb)
{
	const struct st_tensor *a = pa, *b = pb;
	const uint8_t *da = a->data, *db = b->data;

	if (da != db)
		return da < db ? -1 : 1;
	if (a->n_bytes != b->n_bytes)
		return a->n_bytes < b->n_bytes ? -1 : 1;
	return strcmp(a->name, b->name);
}

/*
 * The name index used by st_find lives right after the tensor array in the
 * same allocation: n pointers into tensors[], sorted by name. It keeps
 * st_find O(log n) without changing struct st_file.
 */
static const struct st_tensor **st_name_index(const struct st_file *f)
{
	return (const struct st_tensor **)(void *)(f->tensors + f->n_tensors);
}

static int cmp_name(const void *a, const void *b)
{
	return strcmp((*(const struct st_tensor *const *)a)->name,
		      (*(const struct st_tensor *const *)b)->name);
}

static int st_check_overlap(const struct st_ctx *c, const struct st_file *f)
{
	const struct st_tensor *last = NULL;
	const uint8_t *last_end = NULL;
	uint32_t i;

	/* Sorted by start: a tensor overlaps an earlier one iff it starts before
	 * the furthest end seen so far. Empty tensors overlap nothing. */
	for (i = 0; i < f->n_tensors; i++) {
		const struct st_tensor *t = &f->tensors[i];
		const uint8_t *b = t->data;

		if (t->n_bytes == 0)
			continue;
		if (last && b < last_end) {
			char e1[MODEL_ESC_MAX], e2[MODEL_ESC_MAX];
			const uint8_t *lb = last->data;

			return st_fail(c, NULL, "tensors '%s' [%td, %td) and '%s' [%td, %td) overlap",
				       model__esc(e1, sizeof(e1), last->name), lb - c->data,
				       last_end - c->data, model__esc(e2, sizeof(e2), t->name),
				       b - c->data, b + t->n_bytes - c->data);
		}
		if (!last || b + t->n_bytes > last_end) {
			last = t;
			last_end = b + t->n_bytes;
		}
	}
	return 0;
}

static void st_free_tensors(struct st_tensor *ts, uint32_t n)
{
	uint32_t i;

	for (i = 0; ts && i < n; i++)
		free(ts[i].name);
	free(ts);
}

static int st_parse_json(const struct st_ctx *c, const cJSON *root, struct st_file *f)
{
	const cJSON *e, *meta = NULL;
	uint32_t n = 0, i;
	size_t bytes;
	int r;

	if (!cJSON_IsObject(root))
		return st_fail(c, NULL, "header is %s, not a JSON object", model__json_type(root));
	cJSON_ArrayForEach(e, root) {
		if (strcmp(e->string, "__metadata__") == 0)
			meta = e;
		else
			n++;
	}
	if (meta) {
		if (!cJSON_IsObject(meta))
			return st_fail(c, NULL, "__metadata__ is %s, not an object",
				       model__json_type(meta));
		cJSON_ArrayForEach(e, meta)
			if (!cJSON_IsString(e)) {
				char esc[MODEL_ESC_MAX];

				return st_fail(c, NULL, "__metadata__ '%s' is %s, not a string",
					       model__esc(esc, sizeof(esc), e->string),
					       model__json_type(e));
			}
	}
	if (n == 0)
		return 0;

	/* n < ST_MAX_HEADER / 8 (each entry takes more than 8 header bytes):
	 * the size below cannot overflow. */
	bytes = (size_t)n * (sizeof(struct st_tensor) + sizeof(struct st_tensor *));
	f->tensors = calloc(1, bytes);
	if (!f->tensors)
		return -ENOMEM;
	cJSON_ArrayForEach(e, root) {
		if (e == meta)
			continue;
		r = st_parse_tensor(c, e, &f->tensors[f->n_tensors]);
		if (r < 0)
			return r;
		f->n_tensors++;
	}

	qsort(f->tensors, n, sizeof(*f->tensors), cmp_offset);
	r = st_check_overlap(c, f);
	if (r < 0)
		return r;
	for (i = 0; i < n; i++)
		st_name_index(f)[i] = &f->tensors[i];
	qsort(st_name_index(f), n, sizeof(struct st_tensor *), cmp_name);
	return 0;
}

int st_parse(const void *buf, size_t len, const char *name, struct st_file *ret, char *err,
	     size_t errlen)
{
	struct st_ctx c = { .file = name ? name : "safetensors", .err = err, .errlen = errlen };
	struct st_file f = { 0 };
	const uint8_t *p = buf;
	char why[256];
	uint64_t hlen = 0;
	cJSON *root;
	int r, i;

	if ((!buf && len) || !ret)
		return -EINVAL;
	if (len < 8)
		return st_fail(&c, NULL, "truncated: %zu bytes, too short for the 8-byte header length",
			       len);
	for (i = 7; i >= 0; i--)
		hlen = hlen << 8 | p[i];
	if (hlen > ST_MAX_HEADER)
		return st_fail(&c, NULL, "header length %llu is over the %u-byte limit",
			       (unsigned long long)hlen, ST_MAX_HEADER);
	if (hlen > len - 8)
		return st_fail(&c, NULL,
			       "truncated: header length %llu runs past the end of the file (%zu bytes)",
			       (unsigned long long)hlen, len);
	c.data = p + 8 + hlen;
	c.data_len = len - 8 - hlen;

	root = model__json_parse((const char *)p + 8, hlen, why, sizeof(why));
	if (!root) {
		r = -errno;
		st_fail(&c, NULL, "header: %s", why);
		return r;
	}
	r = st_parse_json(&c, root, &f);
	cJSON_Delete(root);
	if (r == 0) {
		f.path = strdup(c.file);
		if (!f.path)
			r = -ENOMEM;
	}
	if (r < 0) {
		if (r == -ENOMEM)
			st_fail(&c, NULL, "out of memory");
		st_free_tensors(f.tensors, f.n_tensors);
		return r;
	}
	*ret = f;
	return 0;
}

int st_open(const char *path, struct st_file *ret, char *err, size_t errlen)
{
	const char *base;
	struct st_file f;
	struct stat st;
	void *map = NULL;
	size_t len;
	char *p;
	int fd, r;

	if (!path || !ret)
		return -EINVAL;
	base = strrchr(path, '/');
	base = base && base[1] ? base + 1 : path;

	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		r = -errno;
		set_msg(err, errlen, "%s: cannot open: %s", base, strerror(-r));
		return r;
	}
	if (fstat(fd, &st) < 0) {
		r = -errno;
		set_msg(err, errlen, "%s: cannot stat: %s", base, strerror(-r));
		goto out_close;
	}
	if (!S_ISREG(st.st_mode)) {
		r = -EINVAL;
		set_msg(err, errlen, "%s: not a regular file", base);
		goto out_close;
	}
	if ((uint64_t)st.st_size > SIZE_MAX) {
		r = -EFBIG;
		set_msg(err, errlen, "%s: too large to map", base);
		goto out_close;
	}
	len = (size_t)st.st_size;
	if (len > 0) {
		/* Never read whole: the kernel pages the data in as the loader
		 * streams it to the backend. A file truncated by someone else
		 * while mapped raises SIGBUS; model directories are not
		 * expected to change under a running load. */
		map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
		if (map == MAP_FAILED) {
			r = -errno;
			set_msg(err, errlen, "%s: cannot map: %s", base, strerror(-r));
			goto out_close;
		}
		(void)madvise(map, len, MADV_SEQUENTIAL);
	}
	r = st_parse(map ? map : "", len, base, &f, err, errlen);
	if (r < 0)
		goto out_unmap;
	p = strdup(path);
	if (!p) {
		st_close(&f);
		r = -ENOMEM;
		set_msg(err, errlen, "%s: out of memory", base);
		goto out_unmap;
	}
	free(f.path);
	f.path = p;
	f.map = map;
	f.map_len = len;
	*ret = f;
	close(fd);
	return 0;

out_unmap:
	if (map)
		munmap(map, len);
out_close:
	close(fd);
	return r;
}

void st_close(struct st_file *f)
{
	if (!f)
		return;
	st_free_tensors(f->tensors, f->n_tensors);
	free(f->path);
	if (f->map)
		munmap(f->map, f->map_len);
	memset(f, 0, sizeof(*f));
}

const struct st_tensor *st_find(const struct st_file *f, const char *name)
{
	const struct st_tensor *const *idx;
	uint32_t lo = 0, hi;

	if (!f || !f->tensors || !name)
		return NULL;
	idx = st_name_index(f);
	hi = f->n_tensors;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		const struct st_tensor *t = idx[mid];
		int c = strcmp(name, t->name);

		if (c == 0)
			return t;
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NULL;
}
