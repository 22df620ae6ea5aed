# Thin wrappers around ./dev.sh, which works without make too.
.PHONY: run serve test test-fast deb
run serve:
	./dev.sh serve
test:
	./dev.sh test
test-fast:
	./dev.sh test-fast
deb:
	./dev.sh deb
