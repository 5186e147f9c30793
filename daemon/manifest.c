/* SPDX-License-Identifier: MIT */
/*
 * Named sessions' manifests (manifest.proto): written by a small thread, so
 * that fsync never stalls the reactor, each atomically (write new, fsync,
 * rename, fsync the directory); read back at start, where a manifest made for
 * another model is refused with a clear message and left in place.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "hr_common.h"
#include "hr_log.h"
#include "manifest.pb-c.h"
#include "tier_pvt.h"

static int fsync_dir(const char *dir)
{
	_cleanup_close_ int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0 || fsync(fd) < 0)
		return -errno;
	return 0;
}

/* Write new, fsync, rename over the old, fsync the directory. */
static int write_atomic(const char *dir, const char *path, const uint8_t *buf, size_t len)
{
	char tmp[4300];
	_cleanup_close_ int fd = -1;
	size_t off = 0;

	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	while (off < len) {
		ssize_t n = write(fd, buf + off, len - off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			int r = n < 0 ? -errno : -EIO;
			unlink(tmp);
			return r;
		}
		off += (size_t)n;
	}
	if (fsync(fd) < 0 || rename(tmp, path) < 0) {
		int r = -errno;
		unlink(tmp);
		return r;
	}
	return fsync_dir(dir);
}

static void *writer_main(void *arg)
{
	struct hd_tiering *t = arg;

	hr_thread_name("hd-manifest", NULL);
	pthread_mutex_lock(&t->lock);
	for (;;) {
		struct manifest_job *j;

		while (!t->head && !t->stop)
			pthread_cond_wait(&t->cond, &t->lock);
		if (!t->head)
			break;
		j = t->head;
		t->head = j->next;
		if (!t->head)
			t->tail = NULL;
		pthread_mutex_unlock(&t->lock);
		int r = j->buf ? write_atomic(t->sessions_dir, j->path, j->buf, j->len)
			       : (unlink(j->path) < 0 && errno != ENOENT ? -errno : 0);
		if (r < 0)
			hr_err("session manifest %s: %s (the session stays in memory)", j->path,
			       strerror(-r));
		free(j->buf);
		free(j);
		pthread_mutex_lock(&t->lock);
	}
	pthread_mutex_unlock(&t->lock);
	return NULL;
}

static void manifest_path(const struct hd_tiering *t, const char *name, char *buf, size_t len)
{
	snprintf(buf, len, "%s/%016llx.session", t->sessions_dir,
		 (unsigned long long)XXH3_64bits(name, strlen(name)));
}

static void writer_push(struct hd_tiering *t, const char *name, uint8_t *buf, size_t len)
{
	struct manifest_job *j = calloc(1, sizeof(*j));

	if (!j) {
		free(buf);
		return;
	}
	manifest_path(t, name, j->path, sizeof(j->path));
	j->buf = buf;
	j->len = len;
	pthread_mutex_lock(&t->lock);
	if (t->tail)
		t->tail->next = j;
	else
		t->head = j;
	t->tail = j;
	pthread_cond_signal(&t->cond);
	pthread_mutex_unlock(&t->lock);
}

void hd_manifest_save(struct hd_model *hm, struct hd_session *s, bool with_slots)
{
	struct hd_tiering *t = hm->tiering;
	Hearth__Manifest__SessionManifest m = HEARTH__MANIFEST__SESSION_MANIFEST__INIT;
	struct timespec now;
	uint8_t *buf;
	size_t len;

	if (!s->name || !t->sessions_dir[0])
		return;
	clock_gettime(CLOCK_REALTIME, &now);
	m.version = 1;
	m.model_fingerprint = hm->model->fingerprint;
	m.name = s->name;
	m.n_tokens = engine_seq_len(s->seq);
	m.tokens = (int32_t *)engine_seq_tokens(s->seq);
	m.page_tokens = hm->cfg.page_tokens;
	m.page_bytes = t->page_bytes;
	if (with_slots && s->tier == HD_TIER_L2) {
		m.n_slots = m.n_checksums = s->n_pages;
		m.kv_tokens = s->kv_tokens;
		m.slots = s->slots;
		m.checksums = s->checksums;
	}
	m.written_unix_ms = (uint64_t)now.tv_sec * 1000 + (uint64_t)now.tv_nsec / 1000000;
	len = hearth__manifest__session_manifest__get_packed_size(&m);
	buf = malloc(len ? len : 1);
	if (!buf)
		return;
	hearth__manifest__session_manifest__pack(&m, buf);
	s->manifest_len = engine_seq_len(s->seq);
	writer_push(t, s->name, buf, len);
}

int hd_mkdir_p(const char *path)
{
	char buf[4200];

	snprintf(buf, sizeof(buf), "%s", path);
	for (char *p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = 0;
		if (mkdir(buf, 0700) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(buf, 0700) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

static uint8_t *read_file(const char *path, size_t *ret_len)
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	uint8_t *buf;
	size_t off = 0;

	if (fd < 0 || fstat(fd, &st) < 0 || st.st_size > MANIFEST_MAX)
		return NULL;
	buf = malloc((size_t)st.st_size + 1);
	while (buf && off < (size_t)st.st_size) {
		ssize_t n = read(fd, buf + off, (size_t)st.st_size - off);
		if (n <= 0) {
			free(buf);
			return NULL;
		}
		off += (size_t)n;
	}
	*ret_len = off;
	return buf;
}

static void slots_forget(struct hd_session *s)
{
	free(s->slots);
	free(s->checksums);
	s->slots = NULL;
	s->checksums = NULL;
	s->n_pages = 0;
}

/* Restore one manifest; returns 0, or -errno when it is refused (logged). */
static int restore_one(struct hd_model *hm, const char *path)
{
	struct hd_tiering *t = hm->tiering;
	Hearth__Manifest__SessionManifest *m;
	struct engine_seq *seq;
	struct hd_session *s;
	uint32_t pt = hm->cfg.page_tokens, need;
	size_t len = 0;
	uint8_t *buf = read_file(path, &len);
	int r = 0;

	if (!buf) {
		hr_err("session manifest %s: cannot read: %s", path, strerror(errno ? errno : EIO));
		return -EIO;
	}
	m = hearth__manifest__session_manifest__unpack(NULL, len, buf);
	free(buf);
	if (!m || m->version != 1 || !m->name[0]) {
		hr_err("session manifest %s: malformed; left in place, not restored", path);
		r = -EBADMSG;
		goto out;
	}
	if (m->model_fingerprint != hm->model->fingerprint) {
		hr_err("session manifest %s (session '%s') was made for another model "
		       "(fingerprint %016llx, this model %016llx): refused; move it away to silence this",
		       path, m->name, (unsigned long long)m->model_fingerprint,
		       (unsigned long long)hm->model->fingerprint);
		r = -EXDEV;
		goto out;
	}
	for (size_t i = 0; i < m->n_tokens; i++)
		if (m->tokens[i] < 0 || (uint32_t)m->tokens[i] >= hm->model->cfg.vocab_size) {
			hr_err("session manifest %s: token %zu out of the vocabulary; refused", path, i);
			r = -EBADMSG;
			goto out;
		}
	if (hd_session_find_name(hm, m->name, strlen(m->name))) {
		hr_err("session manifest %s: a second manifest for '%s'; ignored", path, m->name);
		r = -EEXIST;
		goto out;
	}
	seq = engine_seq_from_history(hm->engine, m->tokens, (uint32_t)m->n_tokens);
	s = seq ? hd_session_restore(hm, m->name, seq) : NULL;
	if (!s) {
		engine_seq_free(hm->engine, seq);
		r = -ENOMEM;
		goto out;
	}
	s->manifest_len = (uint32_t)m->n_tokens;
	/* Manifests before kv_tokens held pages for the whole history. */
	s->kv_tokens = m->kv_tokens ? m->kv_tokens : (uint32_t)m->n_tokens;
	need = s->kv_tokens <= m->n_tokens ? (s->kv_tokens + pt - 1) / pt : 0;
	/* Pages in L2 only when they fit this configuration exactly; otherwise the
	 * history is enough: the KV is recomputed on first use. */
	if (t->l2 && m->n_slots == need && m->n_checksums == need && need &&
	    m->page_tokens == pt && m->page_bytes == t->page_bytes) {
		s->slots = malloc(need * sizeof(uint32_t));
		s->checksums = malloc(need * sizeof(uint64_t));
		if (s->slots && s->checksums) {
			uint32_t ok = 0;
			for (; ok < need; ok++)
				if (kv_l2_slot_mark_used(t->l2, m->slots[ok]) < 0)
					break;
			s->n_pages = need;
			memcpy(s->slots, m->slots, need * sizeof(uint32_t));
			memcpy(s->checksums, m->checksums, need * sizeof(uint64_t));
			if (ok == need) {
				s->tier = HD_TIER_L2;
			} else {
				for (uint32_t i = 0; i < ok; i++)
					kv_l2_slot_free(t->l2, s->slots[i]);
				slots_forget(s);
			}
		} else {
			slots_forget(s);
		}
	}
	hr_info("restored session '%s': %zu tokens, %s", m->name, m->n_tokens,
		s->tier == HD_TIER_L2 ? "pages in L2" : "KV recomputed on first use");
out:
	if (m)
		hearth__manifest__session_manifest__free_unpacked(m, NULL);
	return r;
}

void hd_manifest_restore_all(struct hd_model *hm)
{
	struct hd_tiering *t = hm->tiering;
	DIR *dir = opendir(t->sessions_dir);
	struct dirent *de;
	uint32_t n = 0, refused = 0;

	if (!dir)
		return;
	while ((de = readdir(dir))) {
		char path[4500];
		size_t l = strlen(de->d_name);

		if (l < 9 || strcmp(de->d_name + l - 8, ".session"))
			continue;
		snprintf(path, sizeof(path), "%s/%s", t->sessions_dir, de->d_name);
		if (restore_one(hm, path) < 0)
			refused++;
		else
			n++;
	}
	closedir(dir);
	if (n || refused)
		hr_info("%u named sessions restored from %s, %u refused", n, t->sessions_dir, refused);
}


void hd_manifest_remove(struct hd_tiering *t, const char *name)
{
	if (t->sessions_dir[0])
		writer_push(t, name, NULL, 0);
}

int hd_manifest_start(struct hd_tiering *t)
{
	pthread_mutex_init(&t->lock, NULL);
	pthread_cond_init(&t->cond, NULL);
	t->writer_started = pthread_create(&t->writer, NULL, writer_main, t) == 0;
	return t->writer_started ? 0 : -EAGAIN;
}

/* Drain the queue (every manifest is written) and join the writer. */
void hd_manifest_stop(struct hd_tiering *t)
{
	if (!t->writer_started)
		return;
	pthread_mutex_lock(&t->lock);
	t->stop = true;
	pthread_cond_signal(&t->cond);
	pthread_mutex_unlock(&t->lock);
	pthread_join(t->writer, NULL);
	pthread_mutex_destroy(&t->lock);
	pthread_cond_destroy(&t->cond);
	t->writer_started = false;
}
