# Cross-build of the Windows programs with mingw-w64, driven by
# scripts/build-windows (which builds DEPS and writes OUT/Makefile setting
# TOP and DEPS, then includes this file).  Objects land in the build
# directory; nothing is written to the source tree.
#
#   tether-agent.exe      static, imports only system DLLs (the daemon included:
#                         run, polling and listening mode, service)
#   tether-schannel.dll   the Schannel provider; exports only
#                         tether_provider_init (providers/schannel/schannel.def)
#
#   tether-ping.exe       static; without the probe handshakes (they use
#                         libssl directly, and this build has no OpenSSL)

HOST ?= x86_64-w64-mingw32
CC = $(HOST)-gcc
AR = $(HOST)-ar
VERSION := $(shell sed -n '/^AC_INIT/{s/.*\[tether\], \[//;s/\].*//;p;}' $(TOP)/configure.ac)

WARN = -Wall -Wextra -Wshadow -Wformat=2 -Wno-unused-parameter -Wno-format-nonliteral \
	-Wno-format-truncation -Werror
# _WIN32_WINNT 0x0A00: Windows 10 / Server 2016 and later.  __USE_MINGW_ANSI_STDIO:
# C99 printf (%zu, %lld) everywhere.
CPPFLAGS = -iquote . -I$(TOP)/include -iquote $(TOP)/core -iquote $(TOP)/cli -iquote $(TOP)/agent -I$(TOP)/core/win32 -I$(DEPS)/include \
	-D_WIN32_WINNT=0x0A00 -DWINVER=0x0A00 -D__USE_MINGW_ANSI_STDIO=1 -D_GNU_SOURCE -DUNICODE -D_UNICODE \
	-include $(TOP)/core/compat_win.h \
	-DTETHER_PROVIDER_DIR=\"\" -DTETHER_BUILD_DIR=\"$(CURDIR)\" \
	-DTETHER_SYSCONFDIR=\"\" -DTETHER_LOCALSTATEDIR=\"\" \
	-DJANSSON_STATIC -DCMOCKA_STATIC
CFLAGS = -O2 -g $(WARN)
LDFLAGS = -static
SYSLIBS = -lpsapi -luser32 -ladvapi32 -liphlpapi -luserenv -lws2_32 -lshell32 -lcrypt32 -lsecur32 -lbcrypt -lncrypt

CORE_SRC = error.c log.c util.c fsutil.c thumbprint.c conf.c instance.c loader.c \
	trust.c secret.c pem.c audit.c identity.c ratelimit.c ticketkey.c \
	frame.c hello.c rpc.c conn.c workers.c compat_win.c compat_win_fs.c pathjail_win.c
CLI_SRC = cli.c cli_instance.c cli_cert.c cli_tls.c
AGENT_SRC = main.c cli_trust.c cli_register.c service_win.c daemon.c services.c \
	service_script.c service_file.c proctree_win.c
# Not ported: cli/cli_doctor.c (POSIX ownership and permission checks, the
# admin socket); TETHER_NO_DOCTOR leaves 'doctor' out of the verb table.
# core/pathjail_win.c replaces core/pathjail.c (see docs/windows.md).
CPPFLAGS += -DTETHER_NO_DOCTOR
SCH_SRC = sch_provider.c sch_identity.c sch_pkcs12.c sch_tls.c sch_err.c

CORE_OBJ = $(CORE_SRC:%.c=obj/core/%.o)
CLI_OBJ = $(CLI_SRC:%.c=obj/cli/%.o)
AGENT_OBJ = $(AGENT_SRC:%.c=obj/agent/%.o)
SCH_OBJ = $(SCH_SRC:%.c=obj/sch/%.o)

# tether-ping: the probe handshakes use libssl directly (tools/ping_probe.c);
# tools/ping_probe_win.c says so instead.
PING_SRC = ping.c ping_ident.c ping_tap.c ping_probe_win.c
PING_OBJ = $(PING_SRC:%.c=obj/tools/%.o)

PROGRAMS = tether-agent.exe tether-ping.exe tether-schannel.dll

all: $(PROGRAMS)

config.h: $(TOP)/configure.ac
	@printf '#define PACKAGE_VERSION "%s"\n#define VERSION "%s"\n#define PACKAGE "tether"\n' \
		'$(VERSION)' '$(VERSION)' >$@

# OVERLAY=DIR compiles DIR/core/X.c (DIR/agent/X.c, DIR/cli/X.c) instead of
# the tree's file when it exists: for trying a port of a file someone else
# is editing without touching it.  Empty by default.
ifneq ($(OVERLAY),)
obj/core/%.o: $(OVERLAY)/core/%.c config.h
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) -MMD -c $< -o $@
obj/agent/%.o: $(OVERLAY)/agent/%.c config.h
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) -MMD -c $< -o $@
obj/cli/%.o: $(OVERLAY)/cli/%.c config.h
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) -MMD -c $< -o $@
endif
obj/core/%.o: $(TOP)/core/%.c config.h
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) -MMD -c $< -o $@
obj/cli/%.o: $(TOP)/cli/%.c config.h
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) -MMD -c $< -o $@
obj/agent/%.o: $(TOP)/agent/%.c config.h
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) -MMD -c $< -o $@
obj/tools/%.o: $(TOP)/tools/%.c config.h
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) -iquote $(TOP)/tools $(CFLAGS) -MMD -c $< -o $@
obj/sch/%.o: $(TOP)/providers/schannel/%.c config.h
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) -I$(TOP)/providers/schannel $(CFLAGS) -MMD -c $< -o $@

libtether.a: $(CORE_OBJ)
	rm -f $@ && $(AR) rcs $@ $^

tether-agent.exe: $(AGENT_OBJ) $(CLI_OBJ) libtether.a
	$(CC) $(LDFLAGS) -o $@ $(AGENT_OBJ) $(CLI_OBJ) libtether.a \
		$(DEPS)/lib/libinih.a $(DEPS)/lib/libjansson.a $(DEPS)/lib/libuv.a \
		-lpthread $(SYSLIBS)

tether-ping.exe: $(PING_OBJ) libtether.a
	$(CC) $(LDFLAGS) -o $@ $(PING_OBJ) libtether.a \
		$(DEPS)/lib/libinih.a $(DEPS)/lib/libjansson.a $(DEPS)/lib/libuv.a \
		-lpthread $(SYSLIBS)

# The provider DLL links only what it needs, statically (libgcc too), and
# exports the one entry symbol named in its .def file.
tether-schannel.dll: $(SCH_OBJ) $(TOP)/providers/schannel/schannel.def
	$(CC) -shared -static-libgcc -o $@ $(SCH_OBJ) $(TOP)/providers/schannel/schannel.def \
		-lcrypt32 -lsecur32 -lncrypt -lbcrypt -ladvapi32

clean:
	rm -rf obj *.a *.exe *.dll config.h

.PHONY: all clean
-include $(CORE_OBJ:.o=.d) $(CLI_OBJ:.o=.d) $(AGENT_OBJ:.o=.d) $(SCH_OBJ:.o=.d) $(PING_OBJ:.o=.d)

# Test program run under Wine by tests/integration/windows.sh: the
# provider's TLS client through the ABI against openssl s_server.
sch_tls_probe.exe: obj/tests/sch_tls_probe.o libtether.a
	$(CC) $(LDFLAGS) -o $@ $< libtether.a $(DEPS)/lib/libinih.a \
		$(DEPS)/lib/libjansson.a -lpthread $(SYSLIBS)
obj/tests/%.o: $(TOP)/tests/windows/%.c config.h
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) -MMD -c $< -o $@
all: sch_tls_probe.exe
