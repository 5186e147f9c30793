/* SPDX-License-Identifier: MIT */
/*
 * st_parse and st_open: well-formed images are accepted with every field
 * right, and each kind of malformed image is rejected with -EINVAL, the
 * struct untouched, and a message naming the problem.
 */
#include "mt.h"

#include <fcntl.h>
#include <stdint.h>
#include <sys/stat.h>

#include "model.h"
#include "parse_pvt.h"

/* 8-byte LE header length, the header, then data_len bytes of pattern. */
static uint8_t *img(const char *hdr, size_t hlen, size_t data_len, size_t *ret_len)
{
	uint8_t *b = malloc(8 + hlen + data_len + 1);
	size_t i;

	for (i = 0; i < 8; i++)
		b[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
	memcpy(b + 8, hdr, hlen);
	for (i = 0; i < data_len; i++)
		b[8 + hlen + i] = (uint8_t)(i * 7 + 1);
	*ret_len = 8 + hlen + data_len;
	return b;
}

static void expect_fail_img(int line, const uint8_t *b, size_t len, const char *w1, const char *w2)
{
	struct st_file f, before;
	char err[512] = "";
	int r;

	memset(&f, 0xa5, sizeof(f));
	before = f;
	r = st_parse(b, len, "t.safetensors", &f, err, sizeof(err));
	if (r != -EINVAL || memcmp(&f, &before, sizeof(f)) != 0 || !strstr(err, w1) ||
	    (w2 && !strstr(err, w2)) || !strstr(err, "t.safetensors")) {
		fprintf(stderr, "line %d: r=%d err=\"%s\" (want \"%s\"%s%s%s)\n", line, r, err, w1,
			w2 ? ", \"" : "", w2 ? w2 : "", w2 ? "\"" : "");
		mt_failures++;
	}
	/* no message buffer: still rejected, nothing written */
	r = st_parse(b, len, "t.safetensors", &f, NULL, 0);
	CHECK(r == -EINVAL);
	/* tiny buffer: truncated, terminated */
	memset(err, 'x', sizeof(err));
	r = st_parse(b, len, "t.safetensors", &f, err, 7);
	CHECK(r == -EINVAL && strlen(err) == 6 && err[7] == 'x');
}

#define expect_fail(hdr, data_len, w1, w2)                                    \
	do {                                                                   \
		size_t _len;                                                   \
		uint8_t *_b = img(hdr, strlen(hdr), data_len, &_len);          \
		expect_fail_img(__LINE__, _b, _len, w1, w2);                   \
		free(_b);                                                      \
	} while (0)

#define T(name, dt, shape, b, e) "\"" name "\":{\"dtype\":\"" dt "\",\"shape\":" shape ",\"data_offsets\":[" #b "," #e "]}"

static void test_good(void)
{
	const char *hdr = "{\"__metadata__\":{\"format\":\"pt\"}," T("b", "BF16", "[2,3]", 16, 28) ","
			  T("a", "F32", "[4]", 0, 16) "," T("e", "F16", "[0,5]", 28, 28) ","
			  T("s", "F32", "[]", 28, 32) "," T("h\xc3\xa9\xf0\x9f\x98\x80", "F16", "[1,1,1]", 32, 34)
			  "}       ";
	const struct st_tensor *t;
	struct st_file f = { 0 };
	char err[256] = "";
	size_t len, hl = strlen(hdr);
	uint8_t *b = img(hdr, hl, 34, &len);
	const uint8_t *data = b + 8 + hl;

	CHECK(st_parse(b, len, "good.safetensors", &f, err, sizeof(err)) == 0);
	CHECK(f.n_tensors == 5 && f.map == NULL && f.path && strcmp(f.path, "good.safetensors") == 0);
	if (f.n_tensors == 5) {
		/* sorted by offset; the empty tensor before the one at the same place */
		CHECK(strcmp(f.tensors[0].name, "a") == 0 && strcmp(f.tensors[1].name, "b") == 0 &&
		      strcmp(f.tensors[2].name, "e") == 0 && strcmp(f.tensors[3].name, "s") == 0);
	}
	t = st_find(&f, "b");
	CHECK(t && t->dtype == KERN_BF16 && t->n_dims == 2 && t->shape[0] == 2 && t->shape[1] == 3 &&
	      t->n_elems == 6 && t->n_bytes == 12 && t->data == data + 16);
	t = st_find(&f, "a");
	CHECK(t && t->dtype == KERN_F32 && t->n_dims == 1 && t->n_elems == 4 && t->data == data);
	t = st_find(&f, "e");
	CHECK(t && t->dtype == KERN_F16 && t->n_elems == 0 && t->n_bytes == 0);
	t = st_find(&f, "s");
	CHECK(t && t->n_dims == 0 && t->n_elems == 1 && t->n_bytes == 4 && t->data == data + 28);
	t = st_find(&f, "h\xc3\xa9\xf0\x9f\x98\x80");
	CHECK(t && t->n_dims == 3 && t->n_bytes == 2);
	CHECK(st_find(&f, "c") == NULL && st_find(&f, "") == NULL && st_find(&f, "__metadata__") == NULL);
	st_close(&f);
	CHECK(f.tensors == NULL && f.n_tensors == 0 && f.path == NULL);
	st_close(&f); /* twice: a zeroed struct */
	free(b);

	/* empty header object, no data */
	b = img("{}", 2, 0, &len);
	CHECK(st_parse(b, len, "e", &f, err, sizeof(err)) == 0 && f.n_tensors == 0);
	CHECK(st_find(&f, "a") == NULL);
	st_close(&f);
	free(b);
}

/* Many tensors: the sorted paths of duplicate detection and st_find. */
static void test_many(void)
{
	size_t cap = 64 * 1024, o = 0, len;
	char *h = malloc(cap);
	struct st_file f;
	char err[256];
	uint8_t *b;
	int i;

	o += (size_t)snprintf(h + o, cap - o, "{");
	for (i = 0; i < 500; i++)
		o += (size_t)snprintf(h + o, cap - o, "%s\"t.%d\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[%d,%d]}",
				      i ? "," : "", (i * 37) % 500, ((i * 37) % 500) * 4,
				      ((i * 37) % 500) * 4 + 4);
	snprintf(h + o, cap - o, "}");
	b = img(h, strlen(h), 2000, &len);
	CHECK(st_parse(b, len, "many", &f, err, sizeof(err)) == 0 && f.n_tensors == 500);
	for (i = 0; i < 500; i++) {
		char name[32];
		const struct st_tensor *t;

		snprintf(name, sizeof(name), "t.%d", i);
		t = st_find(&f, name);
		CHECK(t && t->data == b + 8 + strlen(h) + 4 * i);
		CHECK(f.tensors[i].data == b + 8 + strlen(h) + 4 * i);
	}
	st_close(&f);
	free(b);

	/* the same with one name twice, far apart */
	o = 0;
	o += (size_t)snprintf(h + o, cap - o, "{");
	for (i = 0; i < 100; i++)
		o += (size_t)snprintf(h + o, cap - o, "%s\"t.%d\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[%d,%d]}",
				      i ? "," : "", i == 99 ? 3 : i, i * 4, i * 4 + 4);
	snprintf(h + o, cap - o, "}");
	b = img(h, strlen(h), 400, &len);
	expect_fail_img(__LINE__, b, len, "duplicate key 't.3'", NULL);
	free(b);
	free(h);
}

static void test_bad_lengths(void)
{
	uint8_t b[64] = { 0 };
	size_t len;
	uint8_t *p;

	expect_fail_img(__LINE__, b, 0, "truncated", NULL);
	expect_fail_img(__LINE__, b, 5, "truncated", NULL);
	/* header length 100, file of 8 + 10 */
	b[0] = 100;
	memset(b + 8, ' ', 10);
	expect_fail_img(__LINE__, b, 18, "past the end of the file", NULL);
	/* 2^63 */
	memset(b, 0, 8);
	b[7] = 0x80;
	expect_fail_img(__LINE__, b, 64, "limit", NULL);
	/* 2^64 - 1 */
	memset(b, 0xff, 8);
	expect_fail_img(__LINE__, b, 64, "limit", NULL);
	/* just over ST_MAX_HEADER */
	memset(b, 0, 8);
	b[0] = 1;
	b[2] = 0x40; /* 0x400001 ... */
	b[3] = 0x06; /* 0x06400001 = 100 MiB + 1 */
	expect_fail_img(__LINE__, b, 64, "limit", NULL);
	/* empty header */
	p = img("", 0, 0, &len);
	expect_fail_img(__LINE__, p, len, "JSON", NULL);
	free(p);
}

static void test_bad_json(void)
{
	expect_fail("{\"a\":", 0, "not valid JSON", NULL);
	expect_fail("{} x", 0, "not valid JSON", NULL);
	expect_fail("{\"a\":{\"dtype\":\"F32\",}}", 0, "not valid JSON", NULL);
	expect_fail("[1,2]", 0, "not a JSON object", NULL);
	expect_fail("\"x\"", 0, "not a JSON object", NULL);
	expect_fail("null", 0, "not a JSON object", NULL);
	/* non-UTF-8 tensor name */
	expect_fail("{" T("a\xff", "F32", "[1]", 0, 4) "}", 4, "UTF-8", "0xff");
	/* invalid UTF-8 elsewhere: overlong '/', surrogate, past U+10FFFF, cut */
	expect_fail("{\"__metadata__\":{\"k\":\"\xc0\xaf\"}}", 0, "UTF-8", NULL);
	expect_fail("{\"__metadata__\":{\"k\":\"\xe0\x80\xaf\"}}", 0, "UTF-8", NULL);
	expect_fail("{\"__metadata__\":{\"k\":\"\xed\xa0\x80\"}}", 0, "UTF-8", NULL);
	expect_fail("{\"__metadata__\":{\"k\":\"\xf4\x90\x80\x80\"}}", 0, "UTF-8", NULL);
	expect_fail("{\"__metadata__\":{\"k\":\"\xf8\x88\x80\x80\x80\"}}", 0, "UTF-8", NULL);
	expect_fail("{}\xe2\x82", 0, "UTF-8", NULL);
	/* control bytes, NUL, escaped NUL */
	expect_fail("{\"a\x01\":{}}", 0, "control byte 0x01", NULL);
	{
		static const char h[] = "{\"a\":1}\0 ";
		size_t len;
		uint8_t *b = img(h, sizeof(h) - 1, 0, &len);

		expect_fail_img(__LINE__, b, len, "control byte 0x00", NULL);
		free(b);
	}
	expect_fail("{" T("a\\u0000b", "F32", "[1]", 0, 4) "}", 4, "\\u0000", NULL);
	/* an escaped backslash followed by u0000 is fine as JSON: a literal name */
	{
		static const char h[] = "{" T("a\\\\u0000", "F32", "[1]", 0, 4) "}";
		struct st_file f;
		char err[256];
		size_t len;
		uint8_t *b = img(h, strlen(h), 4, &len);

		CHECK(st_parse(b, len, "x", &f, err, sizeof(err)) == 0);
		CHECK(st_find(&f, "a\\u0000") != NULL);
		st_close(&f);
		free(b);
	}
	/* duplicate names, and duplicate keys inside an entry */
	expect_fail("{" T("a", "F32", "[1]", 0, 4) "," T("a", "F32", "[1]", 4, 8) "}", 8, "duplicate",
		    "'a'");
	expect_fail("{\"a\":{\"dtype\":\"F32\",\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
		    "duplicate key 'dtype'", NULL);
}

static void test_bad_entries(void)
{
	expect_fail("{" T("", "F32", "[1]", 0, 4) "}", 4, "empty name", NULL);
	expect_fail("{\"a\":[1]}", 0, "tensor 'a'", "not an object");
	expect_fail("{\"__metadata__\":[]}", 0, "__metadata__", "not an object");
	expect_fail("{\"__metadata__\":{\"k\":1}}", 0, "__metadata__ 'k'", "not a string");
	expect_fail("{" T("w", "I64", "[1]", 0, 8) "}", 8, "tensor 'w'", "unsupported dtype 'I64'");
	expect_fail("{" T("w", "f32", "[1]", 0, 4) "}", 4, "unsupported dtype 'f32'", NULL);
	expect_fail("{\"w\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "'dtype' is a number",
		    NULL);
	expect_fail("{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "'dtype' is missing", NULL);
	/* shapes */
	expect_fail("{" T("w", "F32", "[-1]", 0, 4) "}", 4, "shape[0] (-1)", "non-negative integer");
	expect_fail("{" T("w", "F32", "[2.5]", 0, 10) "}", 10, "shape[0] (2.5)", NULL);
	expect_fail("{" T("w", "F32", "[1,1e300]", 0, 4) "}", 4, "shape[1]", NULL);
	expect_fail("{" T("w", "F32", "[9007199254740993000]", 0, 4) "}", 4, "shape[0]", NULL);
	expect_fail("{" T("w", "F32", "[1e400]", 0, 4) "}", 4, "shape[0]", NULL);
	expect_fail("{" T("w", "F32", "[\"4\"]", 0, 4) "}", 4, "shape[0] (a string)", NULL);
	expect_fail("{" T("w", "F32", "[[4]]", 0, 4) "}", 4, "shape[0] (an array)", NULL);
	expect_fail("{" T("w", "F32", "4", 0, 4) "}", 4, "'shape' is a number", NULL);
	expect_fail("{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, "'shape' is missing", NULL);
	expect_fail("{" T("w", "F32", "[1,1,1,1,1,1,1,1,1]", 0, 4) "}", 4, "9 dimensions", NULL);
	/* product overflow: 2^32 * 2^32 * 2, and 2^53 * 1024 elements * 4 bytes */
	expect_fail("{" T("w", "F32", "[4294967296,4294967296,2]", 0, 4) "}", 4, "too many elements",
		    NULL);
	expect_fail("{" T("w", "F32", "[9007199254740992,1024]", 0, 4) "}", 4, "overflows", NULL);
	/* a zero dimension wins over an overflowing product */
	{
		static const char h[] = "{" T("w", "F32", "[4294967296,4294967296,0,4294967296]", 0, 0) "}";
		struct st_file f;
		char err[256];
		size_t len;
		uint8_t *b = img(h, strlen(h), 0, &len);

		CHECK(st_parse(b, len, "x", &f, err, sizeof(err)) == 0 && f.tensors[0].n_elems == 0);
		st_close(&f);
		free(b);
	}
	/* lying lengths: the message from model.h, exactly */
	{
		static const char h[] = "{" T("model.norm.weight", "F32", "[64]", 0, 128) "}";
		struct st_file f;
		char err[256] = "";
		size_t len;
		uint8_t *b = img(h, strlen(h), 256, &len);

		CHECK(st_parse(b, len, "model.safetensors", &f, err, sizeof(err)) == -EINVAL);
		CHECK(strcmp(err, "model.safetensors: tensor 'model.norm.weight': shape [64] x F32 is 256 "
				  "bytes but data_offsets span 128 bytes") == 0);
		free(b);
	}
	expect_fail("{" T("w", "BF16", "[2,3]", 0, 14) "}", 16, "shape [2, 3] x BF16 is 12 bytes", "14");
	/* offsets */
	expect_fail("{" T("w", "F32", "[0]", 8, 4) "}", 8, "begin after end", NULL);
	expect_fail("{" T("w", "F32", "[2]", 4, 12) "}", 8, "past the end of the data section", NULL);
	expect_fail("{" T("w", "F32", "[0]", 9, 9) "}", 8, "past the end of the data section", NULL);
	expect_fail("{" T("w", "F32", "[1]", -4, 0) "}", 8, "begin (-4)", NULL);
	expect_fail("{" T("w", "F32", "[1]", 0.5, 4.5) "}", 8, "begin (0.5)", NULL);
	expect_fail("{" T("w", "F32", "[1]", 0, 1e20) "}", 8, "end (1e+20)", NULL);
	expect_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "'data_offsets' is missing", NULL);
	expect_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4, "data_offsets",
		    "pair");
	expect_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 8,
		    "data_offsets", "pair");
	expect_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":{\"0\":4}}}", 4,
		    "'data_offsets' is an object", NULL);
	/* overlaps: partial, contained, identical; touching is fine */
	expect_fail("{" T("a", "F32", "[2]", 0, 8) "," T("b", "F32", "[2]", 4, 12) "}", 12, "overlap",
		    "'a' [0, 8) and 'b' [4, 12)");
	expect_fail("{" T("a", "F32", "[4]", 0, 16) "," T("b", "F32", "[1]", 8, 12) ","
		    T("c", "F32", "[1]", 12, 16) "}", 16, "overlap", "'b'");
	expect_fail("{" T("a", "F32", "[1]", 4, 8) "," T("b", "F32", "[1]", 4, 8) "}", 8, "overlap",
		    NULL);
	expect_fail("{" T("a", "F32", "[4]", 0, 16) "," T("b", "F32", "[1]", 4, 8) ","
		    T("c", "F32", "[1]", 12, 16) "}", 16, "overlap", "'a' [0, 16) and 'b'");
}

static void test_utf8(void)
{
	static const struct {
		const char *s;
		int ok;
	} v[] = {
		{ "", 1 }, { "abc", 1 }, { "\xc2\x80", 1 }, { "\xdf\xbf", 1 }, { "\xe0\xa0\x80", 1 },
		{ "\xef\xbf\xbf", 1 }, { "\xed\x9f\xbf", 1 }, { "\xee\x80\x80", 1 },
		{ "\xf0\x90\x80\x80", 1 }, { "\xf4\x8f\xbf\xbf", 1 }, { "\x80", 0 }, { "\xbf", 0 },
		{ "\xc0\x80", 0 }, { "\xc1\xbf", 0 }, { "\xc2", 0 }, { "\xc2\x41", 0 },
		{ "\xe0\x9f\xbf", 0 }, { "\xed\xa0\x80", 0 }, { "\xed\xbf\xbf", 0 }, { "\xe1\x80", 0 },
		{ "\xf0\x8f\xbf\xbf", 0 }, { "\xf4\x90\x80\x80", 0 }, { "\xf5\x80\x80\x80", 0 },
		{ "\xff", 0 }, { "\xf0\x90\x80", 0 }, { "\xf0\x90\x80\x41", 0 }, { "a\xe2\x82\xac\xe2\x82", 0 },
	};
	size_t i, bad;

	for (i = 0; i < sizeof(v) / sizeof(v[0]); i++)
		if (model__utf8_valid(v[i].s, strlen(v[i].s), &bad) != (bool)v[i].ok) {
			fprintf(stderr, "utf8 case %zu: expected %d\n", i, v[i].ok);
			mt_failures++;
		}
	CHECK(!model__utf8_valid("ab\xe2\x82\xac\xff", 6, &bad) && bad == 5);
}

static void test_esc(void)
{
	char buf[16];

	CHECK(strcmp(model__esc(buf, sizeof(buf), "a\nb\x1b"), "a\\x0ab\\x1b") == 0);
	CHECK(strcmp(model__esc(buf, sizeof(buf), "0123456789abcdefgh"), "0123456789ab...") == 0);
	CHECK(strcmp(model__esc(buf, 4, "abcdef"), "...") == 0);
	CHECK(strcmp(model__esc(buf, 2, "abcdef"), "") == 0);
	CHECK(strcmp(model__fmt_shape(buf, sizeof(buf), (const uint64_t[]){ 1, 22, 333 }, 3),
		     "[1, 22, 333]") == 0);
	CHECK(strcmp(model__fmt_shape(buf, sizeof(buf), NULL, 0), "[]") == 0);
	model__fmt_shape(buf, 8, (const uint64_t[]){ 123456, 7 }, 2);
	CHECK(strlen(buf) < 8);
}

static void test_open(void)
{
	char dir[] = "/tmp/hearth-test-st-XXXXXX", path[128], err[256];
	static const char hdr[] = "{" T("x", "F32", "[2]", 0, 8) "}";
	struct st_file f;
	uint8_t *b;
	size_t len;

	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		mt_failures++;
		return;
	}
	b = img(hdr, strlen(hdr), 8, &len);

	snprintf(path, sizeof(path), "%s/good.safetensors", dir);
	CHECK(mt_write(path, b, len) == 0);
	CHECK(st_open(path, &f, err, sizeof(err)) == 0);
	CHECK(f.map && f.map_len == len && strcmp(f.path, path) == 0 && f.n_tensors == 1);
	CHECK(f.tensors && f.tensors[0].data == (const uint8_t *)f.map + 8 + strlen(hdr));
	CHECK(f.tensors && memcmp(f.tensors[0].data, b + 8 + strlen(hdr), 8) == 0);
	st_close(&f);

	/* truncated on disk: 5 bytes, then header cut short, then data cut short */
	snprintf(path, sizeof(path), "%s/trunc5.safetensors", dir);
	CHECK(mt_write(path, b, 5) == 0);
	CHECK(st_open(path, &f, err, sizeof(err)) == -EINVAL);
	CHECK_MSG(err, "trunc5.safetensors: ", "truncated");
	CHECK(strncmp(err, "trunc5", 6) == 0); /* named by file name, not path */
	snprintf(path, sizeof(path), "%s/trunchdr.safetensors", dir);
	CHECK(mt_write(path, b, 8 + 10) == 0);
	CHECK(st_open(path, &f, err, sizeof(err)) == -EINVAL);
	CHECK_MSG(err, "trunchdr.safetensors: ", "past the end of the file");
	snprintf(path, sizeof(path), "%s/truncdata.safetensors", dir);
	CHECK(mt_write(path, b, len - 1) == 0);
	CHECK(st_open(path, &f, err, sizeof(err)) == -EINVAL);
	CHECK_MSG(err, "truncdata.safetensors: tensor 'x'", "past the end of the data section");
	snprintf(path, sizeof(path), "%s/empty.safetensors", dir);
	CHECK(mt_write(path, b, 0) == 0);
	CHECK(st_open(path, &f, err, sizeof(err)) == -EINVAL);
	CHECK_MSG(err, "empty.safetensors: ", "truncated");

	snprintf(path, sizeof(path), "%s/absent.safetensors", dir);
	CHECK(st_open(path, &f, err, sizeof(err)) == -ENOENT);
	CHECK_MSG(err, "absent.safetensors", "cannot open");
	CHECK(st_open(dir, &f, err, sizeof(err)) == -EINVAL);
	CHECK_MSG(err, "not a regular file");
	CHECK(st_open(NULL, &f, err, sizeof(err)) == -EINVAL);
	CHECK(st_parse(NULL, 4, "x", &f, err, sizeof(err)) == -EINVAL);

	free(b);
	mt_rmtree(dir);
}

int main(void)
{
	test_utf8();
	test_esc();
	test_good();
	test_many();
	test_bad_lengths();
	test_bad_json();
	test_bad_entries();
	test_open();
	return mt_done("test_safetensors");
}
