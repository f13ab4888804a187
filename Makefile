# kvmisolate — build, install, test.
#
#   make                  build release binaries
#   make install          install (PREFIX=/usr/local, DESTDIR honoured)
#   make uninstall        remove what install put there
#   make test             every test: host packages, lint, unit + bus tests, the real-kernel VM suite
#   make gnome-extension-zip   the GNOME Shell extension as a zip (gnome-extensions pack)
#   make demo             boot the test VM and show an isolation before/after (host untouched)
#   make fuzz             fuzz the parsers with cargo-fuzz (FUZZ_TIME=120 seconds per target)
#   make dist             target/packages/kvmisolate-VERSION.tar.gz + -vendor.tar.xz (offline builds)
#   make packages         the .deb, the Arch package and the RPM into target/packages/
#   make test-packages    build them, lintian, and each package's file list against `make install`
#
# The install layout is defined here, once: the variables below. Every package installs with
# `make install DESTDIR=... PREFIX=/usr` (packaging/debian/rules, packaging/arch/PKGBUILD,
# packaging/rpm/kvmisolate.spec), and packaging/check-filelist compares each package's files
# with what `make install` installs. The version is defined once too: the workspace Cargo.toml.

PREFIX      ?= /usr/local
BINDIR      ?= $(PREFIX)/bin
LIBEXECDIR  ?= $(PREFIX)/libexec
MANDIR      ?= $(PREFIX)/share/man
DOCDIR      ?= $(PREFIX)/share/doc/kvmisolate
# systemd, dbus-daemon and polkitd only read their own directories, whatever PREFIX is.
UNITDIR     ?= $(if $(filter /usr,$(PREFIX)),/usr/lib/systemd/system,$(PREFIX)/lib/systemd/system)
DBUSDIR     ?= /usr/share/dbus-1
POLKITDIR   ?= /usr/share/polkit-1
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
ZSHCOMPDIR  ?= $(PREFIX)/share/zsh/site-functions
FISHCOMPDIR ?= $(PREFIX)/share/fish/vendor_completions.d
# libvirt reads its hooks from /etc whatever PREFIX is.
SYSCONFDIR  ?= /etc
LIBVIRTHOOKDIR ?= $(SYSCONFDIR)/libvirt/hooks/qemu.d
# GNOME Shell reads system-wide extensions from $XDG_DATA_DIRS/gnome-shell/extensions.
GNOMEEXTDIR ?= $(PREFIX)/share/gnome-shell/extensions
GNOME_UUID  := kvmisolate@kvmisolate.org
GNOME_SRC   := desktop/gnome-shell
GNOME_FILES := metadata.json extension.js client.js format.js stylesheet.css icons/kvmisolate-symbolic.svg
# Plasma reads system-wide applets from $XDG_DATA_DIRS/plasma/plasmoids (KPackage Plasma/Applet).
PLASMOIDDIR ?= $(PREFIX)/share/plasma/plasmoids
PLASMA_ID   := org.kvmisolate.applet
PLASMA_SRC  := desktop/plasma
PLASMA_FILES := metadata.json contents/ui/main.qml contents/ui/Backend.qml \
	contents/ui/FullView.qml contents/ui/Summary.qml contents/ui/Isolations.qml \
	contents/ui/logic.mjs
# The applet's QML module org.kvmisolate.client (desktop/plasma/plugin: C++, Qt 6 Qml + DBus,
# built with CMake into target/plasma-plugin). Qt finds QML modules only in its own QML
# directory (or QML_IMPORT_PATH), so it goes there whatever PREFIX is; QMLDIR overrides it.
CMAKE       ?= cmake
QTPATHS     ?= $(firstword $(foreach p,qtpaths6 qtpaths-qt6 /usr/lib/qt6/bin/qtpaths,$(shell command -v $(p) 2>/dev/null)))
QMLDIR      ?= $(shell $(QTPATHS) --query QT_INSTALL_QML 2>/dev/null)
PLUGIN_BUILD := target/plasma-plugin
PLUGIN_DIR  := org/kvmisolate/client
PLUGIN_FILES := qmldir kvmisolateclient.qmltypes libkvmisolateclient.so
# qmllint from Debian's qt6-declarative-dev-tools (tests/setup-host installs it).
QMLLINT     ?= /usr/lib/qt6/bin/qmllint
CARGO       ?= cargo
# --frozen for offline package builds (after cargo fetch, or with the vendor tarball).
CARGO_FLAGS ?= --locked
VERSION     := $(shell sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
PKGDIR      := target/packages
RELEASE     := target/release
GEN         := target/generated

.PHONY: all build plasma-plugin generate install uninstall test test-host lint lint-js lint-qml unit-test js-test test-vm demo fuzz clean gnome-extension-zip \
	version dist deb arch rpm packages test-packages test-vm-deb

all: build

build: plasma-plugin
	$(CARGO) build --release --workspace $(CARGO_FLAGS)

plasma-plugin:
	$(CMAKE) -S $(PLASMA_SRC)/plugin -B $(PLUGIN_BUILD) -DCMAKE_BUILD_TYPE=Release
	$(CMAKE) --build $(PLUGIN_BUILD)

$(GEN)/stamp: build
	rm -rf $(GEN) && mkdir -p $(GEN)/man $(GEN)/completions
	$(RELEASE)/kvmisolate generate-man $(GEN)/man
	$(RELEASE)/kvmisolate generate-completions $(GEN)/completions
	$(RELEASE)/kvmisolated --generate-man $(GEN)/man
	sed 's|@libexecdir@|$(LIBEXECDIR)|g' systemd/kvmisolated.service.in > $(GEN)/kvmisolated.service
	sed 's|@libexecdir@|$(LIBEXECDIR)|g' dbus/data/org.kvmisolate.Isolator1.service.in > $(GEN)/org.kvmisolate.Isolator1.service
	sed 's|@bindir@|$(BINDIR)|g' libvirt/kvmisolate.in > $(GEN)/libvirt-hook
	touch $@

generate: $(GEN)/stamp

install: $(GEN)/stamp plasma-plugin
	@test -n "$(QMLDIR)" || { echo "make install: Qt's QML directory is unknown (no qtpaths6): pass QMLDIR=..." >&2; exit 1; }
	install -Dm0755 $(RELEASE)/kvmisolate $(DESTDIR)$(BINDIR)/kvmisolate
	install -Dm0755 $(RELEASE)/kvmisolated $(DESTDIR)$(LIBEXECDIR)/kvmisolated
	install -Dm0644 $(GEN)/kvmisolated.service $(DESTDIR)$(UNITDIR)/kvmisolated.service
	install -Dm0644 dbus/data/org.kvmisolate.Isolator1.conf $(DESTDIR)$(DBUSDIR)/system.d/org.kvmisolate.Isolator1.conf
	install -Dm0644 $(GEN)/org.kvmisolate.Isolator1.service $(DESTDIR)$(DBUSDIR)/system-services/org.kvmisolate.Isolator1.service
	install -Dm0644 dbus/org.kvmisolate.Isolator1.xml $(DESTDIR)$(DBUSDIR)/interfaces/org.kvmisolate.Isolator1.xml
	install -Dm0644 polkit/org.kvmisolate.policy $(DESTDIR)$(POLKITDIR)/actions/org.kvmisolate.policy
	install -Dm0644 polkit/50-kvmisolate.rules.example $(DESTDIR)$(DOCDIR)/50-kvmisolate.rules.example
	install -Dm0644 service/kvmisolate.toml.example $(DESTDIR)$(DOCDIR)/kvmisolate.toml.example
	install -Dm0644 README.md $(DESTDIR)$(DOCDIR)/README.md
	install -Dm0644 CHANGELOG.md $(DESTDIR)$(DOCDIR)/CHANGELOG.md
	for f in $(GEN)/man/*.1; do install -Dm0644 $$f $(DESTDIR)$(MANDIR)/man1/$$(basename $$f); done
	for f in $(GEN)/man/*.8; do install -Dm0644 $$f $(DESTDIR)$(MANDIR)/man8/$$(basename $$f); done
	install -Dm0644 $(GEN)/completions/kvmisolate.bash $(DESTDIR)$(BASHCOMPDIR)/kvmisolate
	install -Dm0644 $(GEN)/completions/_kvmisolate $(DESTDIR)$(ZSHCOMPDIR)/_kvmisolate
	install -Dm0644 $(GEN)/completions/kvmisolate.fish $(DESTDIR)$(FISHCOMPDIR)/kvmisolate.fish
	install -Dm0755 $(GEN)/libvirt-hook $(DESTDIR)$(LIBVIRTHOOKDIR)/kvmisolate
	for f in $(GNOME_FILES); do install -Dm0644 $(GNOME_SRC)/$$f $(DESTDIR)$(GNOMEEXTDIR)/$(GNOME_UUID)/$$f; done
	install -Dm0644 dbus/org.kvmisolate.Isolator1.xml $(DESTDIR)$(GNOMEEXTDIR)/$(GNOME_UUID)/dbus/org.kvmisolate.Isolator1.xml
	for f in $(PLASMA_FILES); do install -Dm0644 $(PLASMA_SRC)/$$f $(DESTDIR)$(PLASMOIDDIR)/$(PLASMA_ID)/$$f; done
	for f in $(PLUGIN_FILES); do install -Dm0644 $(PLUGIN_BUILD)/qml/$(PLUGIN_DIR)/$$f $(DESTDIR)$(QMLDIR)/$(PLUGIN_DIR)/$$f; done

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/kvmisolate $(DESTDIR)$(LIBEXECDIR)/kvmisolated
	rm -f $(DESTDIR)$(UNITDIR)/kvmisolated.service
	rm -f $(DESTDIR)$(DBUSDIR)/system.d/org.kvmisolate.Isolator1.conf
	rm -f $(DESTDIR)$(DBUSDIR)/system-services/org.kvmisolate.Isolator1.service
	rm -f $(DESTDIR)$(DBUSDIR)/interfaces/org.kvmisolate.Isolator1.xml
	rm -f $(DESTDIR)$(POLKITDIR)/actions/org.kvmisolate.policy
	rm -rf $(DESTDIR)$(DOCDIR)
	rm -f $(DESTDIR)$(MANDIR)/man1/kvmisolate.1 $(DESTDIR)$(MANDIR)/man1/kvmisolate-*.1 $(DESTDIR)$(MANDIR)/man8/kvmisolated.8
	rm -f $(DESTDIR)$(BASHCOMPDIR)/kvmisolate $(DESTDIR)$(ZSHCOMPDIR)/_kvmisolate $(DESTDIR)$(FISHCOMPDIR)/kvmisolate.fish
	rm -f $(DESTDIR)$(LIBVIRTHOOKDIR)/kvmisolate
	rm -rf $(DESTDIR)$(GNOMEEXTDIR)/$(GNOME_UUID)
	rm -rf $(DESTDIR)$(PLASMOIDDIR)/$(PLASMA_ID)
	test -z "$(QMLDIR)" || rm -rf $(DESTDIR)$(QMLDIR)/$(PLUGIN_DIR)
	test -z "$(QMLDIR)" || rmdir --ignore-fail-on-non-empty $(DESTDIR)$(QMLDIR)/org/kvmisolate 2>/dev/null || true

# Everything CI runs (.ci/run calls exactly this).
test: test-host lint unit-test test-packages test-vm test-vm-deb

# Host packages the tests need (a fresh machine has none of them).
test-host:
	tests/setup-host

lint: lint-js lint-qml
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

# The GNOME Shell extension against GNOME's own lint rules (eslint from npm, pinned by
# desktop/gnome-shell/package-lock.json; tests/setup-host installs it).
lint-js:
	cd $(GNOME_SRC) && ./node_modules/.bin/eslint .
	cd $(PLASMA_SRC) && ../gnome-shell/node_modules/.bin/eslint --max-warnings 0 \
		--resolve-plugins-relative-to ../gnome-shell --ext .mjs .

# The Plasma applet's QML. Debian 12's qmllint (Qt 6.4) has no Plasma or QtQuick modules to
# resolve types against, so the checks that need them are off here (syntax, unused imports,
# deprecations, with, multiline strings stay); the plasma VM case lints against the real ones.
QMLLINT_HOST := --import disable --type disable --property disable --unqualified disable \
	--signal disable --required disable --compiler disable --alias disable \
	--deferred-property-id disable --multiple-attached-objects disable
lint-qml:
	$(QMLLINT) $(QMLLINT_HOST) $(PLASMA_SRC)/contents/ui/*.qml

# Unit tests and the bus tests (real dbus-daemon on a private socket).
unit-test: js-test
	$(CARGO) test --workspace --locked

# The extension's pure logic (subtitle, rows, notifications) under gjs, no shell needed; the
# Plasma applet's (logic.mjs) under node's test runner.
js-test:
	gjs -m $(GNOME_SRC)/tests/format.test.js
	node --test $(PLASMA_SRC)/tests/

# The extension as extensions.gnome.org takes it (needs gnome-extensions, from gnome-shell).
gnome-extension-zip:
	rm -rf $(GEN)/gnome && mkdir -p $(GEN)/gnome/dbus $(GEN)/gnome/icons
	for f in $(GNOME_FILES); do cp $(GNOME_SRC)/$$f $(GEN)/gnome/$$f; done
	cp dbus/org.kvmisolate.Isolator1.xml $(GEN)/gnome/dbus/
	gnome-extensions pack --force --out-dir=target --extra-source=client.js \
		--extra-source=format.js --extra-source=icons --extra-source=dbus $(GEN)/gnome

# The real-kernel acceptance suite in QEMU, on both ends of the matrix: 6.12 + Debian 13
# (systemd 257, libvirt 11.3) and the newest Debian cloud kernel + Debian unstable (systemd 26x,
# libvirt 12); then the libvirt image on both ends and on 6.1 (no remote partitions: the
# refusal users see). `tests/vm/run --all` adds no-systemd on both kernels and the 6.1 suite.
test-vm:
	tests/vm/run
	tests/vm/run --libvirt --only libvirt,libvirt-names,check-vm,plan-libvirt,top-vm,vfio-irqs
	tests/vm/run --libvirt --kernel 6.1 --only libvirt
	tests/vm/run --gnome --kernel 6.12 --only gnome-shell
	tests/vm/run --gnome --kernel newest --only gnome-shell
	tests/vm/run --plasma --only plasma-applet

demo:
	tests/vm/run --demo

version:
	@echo $(VERSION)

# Source release: the tracked files of the working tree, and every crate they need
# (`cargo vendor`) with the .cargo/config.toml that points cargo at them. Both unpack into
# kvmisolate-VERSION/, after which `cargo build --frozen` needs no network.
DIST     := kvmisolate-$(VERSION)
DISTWORK := target/dist
dist:
	rm -rf $(DISTWORK) && mkdir -p $(DISTWORK)/$(DIST)/.cargo $(PKGDIR)
	git ls-files -z | LC_ALL=C sort -z | tar --null --no-recursion --transform 's,^,$(DIST)/,' \
		--owner=0 --group=0 --numeric-owner --mtime='@$(shell git log -1 --format=%ct)' \
		-czf $(PKGDIR)/$(DIST).tar.gz -T -
	$(CARGO) vendor --locked --versioned-dirs $(DISTWORK)/$(DIST)/vendor > $(DISTWORK)/$(DIST)/.cargo/config.toml
	sed -i 's|directory = ".*"|directory = "vendor"|' $(DISTWORK)/$(DIST)/.cargo/config.toml
	cd $(DISTWORK) && find $(DIST) -print0 | LC_ALL=C sort -z | tar --null --no-recursion \
		--owner=0 --group=0 --numeric-owner --mtime='@$(shell git log -1 --format=%ct)' \
		-cJf $(CURDIR)/$(PKGDIR)/$(DIST)-vendor.tar.xz -T -
	@ls -l $(PKGDIR)/$(DIST).tar.gz $(PKGDIR)/$(DIST)-vendor.tar.xz

# The packages (packaging/README.md). Each installs the build tools it needs (packaging/setup).
# DEB_REVISION: the Debian revision (the VM's upgrade test builds revision+1).
DEB_REVISION ?= 1
deb: build
	packaging/setup deb
	packaging/debian/build $(VERSION)-$(DEB_REVISION) $(PKGDIR)

arch: dist
	packaging/setup arch
	packaging/arch/build $(VERSION) $(PKGDIR)

rpm: dist
	packaging/setup rpm
	packaging/rpm/build $(VERSION) $(PKGDIR)

packages: deb arch rpm

# Every package built, lintian clean (errors and warnings fail; each override in
# packaging/debian/kvmisolate.lintian-overrides says why), and holding exactly the files
# `make install` installs.
test-packages: packages
	lintian --fail-on error,warning --info $(PKGDIR)/kvmisolate_$(VERSION)-$(DEB_REVISION)_amd64.deb
	packaging/check-filelist deb $(PKGDIR)/kvmisolate_$(VERSION)-$(DEB_REVISION)_amd64.deb
	packaging/check-filelist arch $(PKGDIR)/kvmisolate-$(VERSION)-1-x86_64.pkg.tar.zst
	bsdtar -xOf $(PKGDIR)/kvmisolate-$(VERSION)-1-x86_64.pkg.tar.zst .INSTALL | grep -q 'release --all'
	packaging/check-filelist rpm $(PKGDIR)/kvmisolate-$(VERSION)-1.x86_64.rpm
	packaging/rpm/check-scripts $(PKGDIR)/kvmisolate-$(VERSION)-1.x86_64.rpm

# The VM suite once against the installed .deb (dpkg -i in the guest instead of make install),
# with the package's own case (install starts nothing; upgrade keeps and adopts an isolation;
# removal releases it).
test-vm-deb: deb
	tests/vm/run --deb $(PKGDIR)/kvmisolate_$(VERSION)-$(DEB_REVISION)_amd64.deb --kernel 6.12 --libvirt \
		--only env,isolate-affinities,release-restores,polkit-deny,polkit-group-rule,libvirt,tunings,deb-package

# Fuzz the contract crate's parsers (fuzz/: cpulist, isolation_name), FUZZ_TIME seconds each.
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and libFuzzer's nightly-only flags; on a
# stable toolchain RUSTC_BOOTSTRAP=1 unlocks them. A crash stops with the input saved under
# fuzz/artifacts/<target>/ (replay: RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <file>).
FUZZ_TIME    ?= 120
FUZZ_TARGETS ?= cpulist isolation_name
fuzz:
	for t in $(FUZZ_TARGETS); do \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$t -- -max_total_time=$(FUZZ_TIME) || exit 1; \
	done

clean:
	$(CARGO) clean
