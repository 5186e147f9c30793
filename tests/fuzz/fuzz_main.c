/* SPDX-License-Identifier: MIT */
/*
 * Replay main for the libFuzzer targets, as systemd's src/fuzz/fuzz-main.c:
 * runs LLVMFuzzerTestOneInput over every file named on the command line,
 * or over every file of a directory named there (the saved corpus), so that
 * each target is also an ordinary test. Each input is copied to a buffer of
 * exactly its size, so AddressSanitizer sees any read past its end.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int run_file(const char *path)
{
	struct stat st;
	uint8_t *buf = NULL;
	size_t done = 0, len;
	int fd, r = -1;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st) < 0) {
		fprintf(stderr, "%s: %s\n", path, strerror(errno));
		goto out;
	}
	len = (size_t)st.st_size;
	buf = malloc(len ? len : 1);
	if (!buf) {
		fprintf(stderr, "%s: out of memory\n", path);
		goto out;
	}
	while (done < len) {
		ssize_t n = read(fd, buf + done, len - done);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			fprintf(stderr, "%s: short read\n", path);
			goto out;
		}
		done += (size_t)n;
	}
	LLVMFuzzerTestOneInput(buf, len);
	r = 0;
out:
	free(buf);
	if (fd >= 0)
		close(fd);
	return r;
}

static int skip_dot(const struct dirent *d)
{
	return d->d_name[0] != '.';
}

int main(int argc, char **argv)
{
	int i, n_inputs = 0, failed = 0;

	if (argc < 2) {
		fprintf(stderr, "usage: %s FILE|DIR...\n", argv[0]);
		return 2;
	}
	for (i = 1; i < argc; i++) {
		struct dirent **names;
		struct stat st;
		int n, j;

		if (stat(argv[i], &st) < 0) {
			fprintf(stderr, "%s: %s\n", argv[i], strerror(errno));
			failed++;
			continue;
		}
		if (!S_ISDIR(st.st_mode)) {
			failed += run_file(argv[i]) < 0;
			n_inputs++;
			continue;
		}
		n = scandir(argv[i], &names, skip_dot, alphasort);
		if (n < 0) {
			fprintf(stderr, "%s: %s\n", argv[i], strerror(errno));
			failed++;
			continue;
		}
		for (j = 0; j < n; j++) {
			char path[4096];

			snprintf(path, sizeof(path), "%s/%s", argv[i], names[j]->d_name);
			if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
				failed += run_file(path) < 0;
				n_inputs++;
			}
			free(names[j]);
		}
		free(names);
	}
	printf("%s: %d input(s), %d unreadable\n", argv[0], n_inputs, failed);
	/* an empty corpus tests nothing: fail rather than pass */
	return failed || n_inputs == 0 ? 1 : 0;
}
