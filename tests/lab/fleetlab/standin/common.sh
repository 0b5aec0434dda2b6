# shellcheck shell=sh disable=SC2034,SC2154,SC1007,SC2018,SC2019,SC2086,SC2046,SC2016,SC2217
# (a fragment: variables are set and read through eval across fragments; field splitting of flag lists and
#  ASCII-only tr ranges are intended, as in the real CLI's hostname rules)
# Shared part of the fleetlab Tailscale stand-in (POSIX sh; runs on busybox ash and dash).
# The release builder (fleetlab.standin.release) inlines this file into both the `tailscale` and the
# `tailscaled` script, after a header that sets TS_STANDIN_VERSION and TS_STANDIN_ARCH.
#
# STAND-IN (fleetlab lab), not Tailscale. It follows the real CLI contract (flags, messages, exit codes,
# JSON shapes) closely enough that roles written against it work with real releases, and nothing more.

TS_STANDIN_LABEL='STAND-IN (fleetlab lab), not Tailscale'
TS_DEFAULT_SOCKET=/var/run/tailscale/tailscaled.sock
TS_DEFAULT_STATE=/var/lib/tailscale/tailscaled.state
TS_DEFAULT_CONTROL=https://controlplane.tailscale.com
TS_MAGICDNS_SUFFIX=fleetlab-standin.ts.net
# Lab-side switches (never used by the collection): NeedsMachineAuth, accepted key hashes.
TS_CTL_DIR=${FLEETLAB_STANDIN_DIR:-/etc/fleetlab-standin}
# Where the tun device node is looked for; only the stand-in's own tests move it.
TS_TUN_DEV=${FLEETLAB_STANDIN_TUN:-/dev/net/tun}

ts_err() { printf '%s\n' "$*" >&2; }

# Go's log.Printf format: "2006/01/02 15:04:05 message".
ts_log() {
	_l="$(date '+%Y/%m/%d %H:%M:%S') $*"
	printf '%s\n' "$_l" >&2
	if [ -n "${TS_LOG_FILE:-}" ]; then printf '%s\n' "$_l" >>"$TS_LOG_FILE" 2>/dev/null || :; fi
}

# --- wrong CPU: behave like the kernel refusing a foreign ELF (execve ENOEXEC, shell exit 126) -------------
ts_elf_endian() {
	# Byte 6 of an ELF header (EI_DATA): 1 little endian, 2 big endian. uname -m does not tell MIPS endianness.
	dd if=/bin/sh bs=1 skip=5 count=1 2>/dev/null | od -An -tu1 | tr -d ' \n'
}

ts_arch_ok() {
	_m=$(uname -m 2>/dev/null)
	case "$TS_STANDIN_ARCH" in
	amd64) [ "$_m" = x86_64 ] ;;
	386 | geode) case "$_m" in i386 | i486 | i586 | i686) return 0 ;; *) return 1 ;; esac ;;
	arm) case "$_m" in armv5* | armv6* | armv7* | armv8l) return 0 ;; *) return 1 ;; esac ;;
	arm64) case "$_m" in aarch64 | arm64) return 0 ;; *) return 1 ;; esac ;;
	riscv64) [ "$_m" = riscv64 ] ;;
	mips) [ "$_m" = mips ] && [ "$(ts_elf_endian)" = 2 ] ;;
	mipsle) [ "$_m" = mips ] && [ "$(ts_elf_endian)" = 1 ] ;;
	mips64) [ "$_m" = mips64 ] && [ "$(ts_elf_endian)" = 2 ] ;;
	mips64le) [ "$_m" = mips64 ] && [ "$(ts_elf_endian)" = 1 ] ;;
	*) return 1 ;;
	esac
}

if ! ts_arch_ok; then
	printf '%s: %s: cannot execute binary file: Exec format error\n' "${0##*/}" "$0" >&2
	exit 126
fi

# --- version ------------------------------------------------------------------------------------------------
ts_commit() { printf '%s' "$TS_STANDIN_VERSION" | sha256sum | cut -c1-40; }
ts_long_version() {
	_c=$(ts_commit)
	printf '%s-t%s-g%s' "$TS_STANDIN_VERSION" "$(printf '%s' "$_c" | cut -c1-9)" "$(printf '%s' "$_c" | cut -c10-18)"
}
ts_print_version() {
	printf '%s\n' "$TS_STANDIN_VERSION"
	printf '  tailscale commit: %s\n' "$(ts_commit)"
	printf '  long version: %s\n' "$(ts_long_version)"
	printf '  go version: none (POSIX sh)\n'
	printf '  %s: fleetlab test lab stand-in for tailscale %s/%s\n' "$TS_STANDIN_LABEL" "$TS_STANDIN_VERSION" \
		"$TS_STANDIN_ARCH"
}

# --- small helpers ------------------------------------------------------------------------------------------
ts_random_hex() {
	# 32 random bytes as 64 hex characters.
	od -An -tx1 -N32 /dev/urandom | tr -d ' \n'
}
ts_sha256() { printf '%s' "$1" | sha256sum | cut -c1-64; }

# Values stored in the state file and printed in JSON are restricted to a safe alphabet, so neither side needs
# escaping. Anything else is refused where it enters (flags, config file).
ts_safe_value() {
	case "$1" in *[!A-Za-z0-9_.:/@,+=~%\ -]*) return 1 ;; *) return 0 ;; esac
}

ts_json_str() { printf '"%s"' "$1"; }
# "a,b" -> ["a", "b"] (indented for JSON.MarshalIndent style); empty -> null.
ts_json_list() {
	_ind=$2
	if [ -z "$1" ]; then
		printf 'null'
		return
	fi
	printf '[\n'
	_first=1
	_old_ifs=$IFS
	IFS=,
	for _v in $1; do
		if [ $_first = 0 ]; then printf ',\n'; fi
		printf '%s\t"%s"' "$_ind" "$_v"
		_first=0
	done
	IFS=$_old_ifs
	printf '\n%s]' "$_ind"
}

# --- Go flag package emulation ------------------------------------------------------------------------------
# ts_parse_flags PROG "SPEC" ARGS...   SPEC: " name=b name=s name=d ..." (bool, string, duration).
# Sets F_<name> (dashes -> underscores), FSET=" name name " (flags the user gave, like flag.Visit),
# FCONSUMED (number of args eaten). Errors print like Go's flag package and exit 2, as ExitOnError does.
ts_flag_usage() {
	printf 'USAGE\n  %s [flags]\n\nFLAGS\n' "$1" >&2
	for _s in $2; do
		printf '  --%s\n' "${_s%=*}" >&2
	done
	printf '\n%s\n' "$TS_STANDIN_LABEL" >&2
}
ts_parse_flags() {
	_prog=$1
	_spec=" $2 "
	shift 2
	FSET=' '
	FCONSUMED=0
	while [ $# -gt 0 ]; do
		_a=$1
		case "$_a" in
		--) FCONSUMED=$((FCONSUMED + 1)); return 0 ;;
		--* | -?*) ;;
		*) return 0 ;;
		esac
		_a=${_a#-}
		_a=${_a#-}
		case "$_a" in
		*=*) _n=${_a%%=*}; _v=${_a#*=}; _hasv=1 ;;
		*) _n=$_a; _v=; _hasv=0 ;;
		esac
		if [ "$_n" = help ] || [ "$_n" = h ]; then
			ts_flag_usage "$_prog" "$_spec"
			exit 0
		fi
		case "$_spec" in
		*" $_n=b "*) _t=b ;;
		*" $_n=s "*) _t=s ;;
		*" $_n=d "*) _t=d ;;
		*)
			ts_err "flag provided but not defined: -$_n"
			ts_flag_usage "$_prog" "$_spec"
			exit 2
			;;
		esac
		shift
		FCONSUMED=$((FCONSUMED + 1))
		if [ "$_t" = b ]; then
			if [ $_hasv = 0 ]; then _v=true; fi
			case "$_v" in
			1 | t | T | TRUE | true | True) _v=true ;;
			0 | f | F | FALSE | false | False) _v=false ;;
			*)
				ts_err "invalid boolean value \"$_v\" for -$_n: parse error"
				ts_flag_usage "$_prog" "$_spec"
				exit 2
				;;
			esac
		elif [ $_hasv = 0 ]; then
			if [ $# -eq 0 ]; then
				ts_err "flag needs an argument: -$_n"
				ts_flag_usage "$_prog" "$_spec"
				exit 2
			fi
			_v=$1
			shift
			FCONSUMED=$((FCONSUMED + 1))
		fi
		if [ "$_t" = d ] && ! ts_duration_ms "$_v" >/dev/null; then
			ts_err "invalid value \"$_v\" for flag -$_n: parse error"
			ts_flag_usage "$_prog" "$_spec"
			exit 2
		fi
		# noDupFlagify: the real CLI refuses a flag given twice.
		case "$FSET" in
		*" $_n "*)
			if [ "$_t" = b ]; then
				ts_err "invalid boolean flag $_n: flag provided multiple times"
			else
				ts_err "invalid value \"$_v\" for flag -$_n: flag provided multiple times"
			fi
			ts_flag_usage "$_prog" "$_spec"
			exit 2
			;;
		esac
		_var=$(printf '%s' "$_n" | tr '-' '_')
		eval "F_$_var=\$_v"
		case "$FSET" in *" $_n "*) ;; *) FSET="$FSET$_n " ;; esac
	done
}
ts_flag_set() { case "$FSET" in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

# Go time.ParseDuration subset (h, m, s, ms, us, ns; fractions), printed in milliseconds.
ts_duration_ms() {
	printf '%s\n' "$1" | awk '
	{
		s = $0; total = 0
		if (s == "0") { print 0; exit 0 }
		if (s == "") exit 1
		while (length(s) > 0) {
			if (!match(s, /^[0-9]+(\.[0-9]*)?/)) exit 1
			num = substr(s, 1, RLENGTH) + 0; s = substr(s, RLENGTH + 1)
			if (match(s, /^(ns|us|ms|s|m|h)/)) { u = substr(s, 1, RLENGTH); s = substr(s, RLENGTH + 1) } else exit 1
			if (u == "h") total += num * 3600000
			else if (u == "m") total += num * 60000
			else if (u == "s") total += num * 1000
			else if (u == "ms") total += num
			else if (u == "us") total += num / 1000
			else total += num / 1000000
		}
		printf "%d\n", total
	}'
}

# --- validation like the real CLI ---------------------------------------------------------------------------
# netutil.CalcAdvertiseRoutes: every entry must be a prefix (a bare address is refused) without host bits; /0
# routes come in pairs; the result is deduplicated and sorted (prefix length, then address) in canonical text.
ts_check_routes() {
	printf '%s\n' "$1" | tr ',' '\n' | awk '
	function fail(msg) { print msg > "/dev/stderr"; bad = 1; exit 1 }
	# busybox awk may lack libm (no "^" operator): powers of two by multiplication.
	function pow2(n,    r) { r = 1; while (n-- > 0) r *= 2; return r }
	function hexval(h,    v, d) { v = 0; h = tolower(h); for (d = 1; d <= length(h); d++) v = v * 16 + index("0123456789abcdef", substr(h, d, 1)) - 1; return v }
	function v4(addr, bits,    o, n, i, x, b) {
		n = split(addr, o, ".")
		if (n != 4) return 0
		for (i = 1; i <= 4; i++) { if (o[i] !~ /^[0-9]+$/ || o[i] + 0 > 255 || (length(o[i]) > 1 && o[i] ~ /^0/)) return 0 }
		if (bits !~ /^[0-9]+$/ || bits + 0 > 32) return 0
		x = ((o[1] * 256 + o[2]) * 256 + o[3]) * 256 + o[4]
		b = pow2(32 - bits)
		V4 = x
		M4 = x - (x % b)
		M4STR = int(M4 / 16777216) "." int(M4 / 65536) % 256 "." int(M4 / 256) % 256 "." M4 % 256
		return 1
	}
	# Parses into G[1..8] (ints) and MG[1..8] (masked); returns 0 when invalid.
	function v6(addr, bits,    halves, left, right, nl, nr, raw, i, n, k, keep, g) {
		if (bits !~ /^[0-9]+$/ || bits + 0 > 128) return 0
		if (addr !~ /^[0-9a-fA-F:]+$/ || addr !~ /:/) return 0
		n = split(addr, halves, "::")
		if (n > 2) return 0
		nl = (halves[1] == "") ? 0 : split(halves[1], left, ":")
		nr = (n == 2 && halves[2] != "") ? split(halves[2], right, ":") : 0
		if (n == 1 && nl != 8) return 0
		if (n == 2 && nl + nr > 7) return 0
		k = 0
		for (i = 1; i <= nl; i++) raw[++k] = left[i]
		for (i = 1; i <= 8 - nl - nr; i++) raw[++k] = "0"
		for (i = 1; i <= nr; i++) raw[++k] = right[i]
		for (i = 1; i <= 8; i++) {
			if (raw[i] !~ /^[0-9a-fA-F]+$/ || length(raw[i]) > 4) return 0
			G[i] = hexval(raw[i])
			keep = bits - (i - 1) * 16
			if (keep >= 16) MG[i] = G[i]
			else if (keep <= 0) MG[i] = 0
			else { g = pow2(16 - keep); MG[i] = G[i] - (G[i] % g) }
		}
		return 1
	}
	# RFC 5952 text of MG[]: longest run (>= 2) of zero groups becomes "::".
	function v6text(    i, best, bestlen, run, start, out) {
		best = 0; bestlen = 1; run = 0
		for (i = 1; i <= 8; i++) {
			if (MG[i] == 0) { if (run == 0) start = i; run++; if (run > bestlen) { bestlen = run; best = start } }
			else run = 0
		}
		out = ""
		for (i = 1; i <= 8; i++) {
			if (best && i == best) { out = out "::"; i += bestlen - 1; continue }
			if (out != "" && substr(out, length(out)) != ":") out = out ":"
			out = out sprintf("%x", MG[i])
		}
		return out
	}
	$0 == "" { next }
	{
		r = $0
		if (r !~ /\//) fail("\"" $0 "\" is not a valid IP address or CIDR prefix")
		split(r, p, "/")
		if (p[1] ~ /:/) {
			if (!v6(p[1], p[2])) fail("\"" $0 "\" is not a valid IP address or CIDR prefix")
			canon = v6text() "/" (p[2] + 0)
			for (i = 1; i <= 8; i++) if (G[i] != MG[i]) fail(tolower(p[1]) "/" p[2] " has non-address bits set; expected " canon)
			if (p[2] + 0 == 0) d6 = 1
			key = sprintf("%03d 6", p[2]); for (i = 1; i <= 8; i++) key = key sprintf("%04x", MG[i])
		} else {
			if (!v4(p[1], p[2])) fail("\"" $0 "\" is not a valid IP address or CIDR prefix")
			if (M4 != V4) fail(r " has non-address bits set; expected " M4STR "/" p[2])
			canon = M4STR "/" (p[2] + 0)
			if (p[2] + 0 == 0) d4 = 1
			key = sprintf("%03d 4%010d", p[2], M4)
		}
		if (!(canon in seen)) { seen[canon] = 1; keys[++nk] = key " " canon }
	}
	END {
		if (bad) exit 1
		if (d4 && !d6) { print "0.0.0.0/0 advertised without its IPv6 counterpart, please also advertise ::/0" > "/dev/stderr"; exit 1 }
		if (d6 && !d4) { print "::/0 advertised without its IPv4 counterpart, please also advertise 0.0.0.0/0" > "/dev/stderr"; exit 1 }
		# insertion sort on the keys (tiny lists; no asort in busybox awk)
		for (i = 2; i <= nk; i++) { v = keys[i]; j = i - 1; while (j >= 1 && keys[j] > v) { keys[j + 1] = keys[j]; j-- } keys[j + 1] = v }
		out = ""
		for (i = 1; i <= nk; i++) { n = split(keys[i], f, " "); out = out (out == "" ? "" : ",") f[n] }
		print out
	}'
}

# tailcfg.CheckTag, as `tailscale up --advertise-tags` reports it.
ts_check_tags() {
	_old_ifs=$IFS
	IFS=,
	for _t in $1; do
		IFS=$_old_ifs
		case "$_t" in
		tag:) ts_err "tag: \"$_t\": tag names can't be empty"; return 1 ;;
		tag:*)
			case "${_t#tag:}" in
			[!a-zA-Z]*) ts_err "tag: \"$_t\": tag names must start with a letter, after 'tag:'"; return 1 ;;
			*[!a-zA-Z0-9-]*) ts_err "tag: \"$_t\": tag names can only contain numbers, letters, or dashes"; return 1 ;;
			esac
			;;
		*) ts_err "tag: \"$_t\": tags must start with 'tag:'"; return 1 ;;
		esac
	done
	IFS=$_old_ifs
	return 0
}

# dnsname.ValidHostname
ts_check_hostname() {
	[ -z "$1" ] && return 0
	_old_ifs=$IFS
	IFS=.
	for _lbl in $1; do
		IFS=$_old_ifs
		if [ ${#_lbl} -gt 63 ]; then
			ts_err "\"$_lbl\" is too long, max length is 63 bytes"
			return 1
		fi
		case "$_lbl" in
		'') ts_err "\"$1\" is not a valid DNS label: empty label"; return 1 ;;
		[!a-zA-Z0-9]*) ts_err "\"$_lbl\" is not a valid DNS label: must start with a letter or number"; return 1 ;;
		*[!a-zA-Z0-9]) ts_err "\"$_lbl\" is not a valid DNS label: must end with a letter or number"; return 1 ;;
		*[!a-zA-Z0-9-]*) ts_err "\"$_lbl\" is not a valid DNS label: contains invalid character"; return 1 ;;
		esac
	done
	IFS=$_old_ifs
	return 0
}

# --- state file ---------------------------------------------------------------------------------------------
# The state file is JSON with one "key": "value" pair per line (string values from the safe alphabet), so the
# CLI and the daemon read and write it with sed and printf. Real tailscaled keeps base64 blobs here instead;
# nothing in the collection may read this file, so the difference is invisible to roles.
TS_STATE_KEYS='_machinekey nodekey loggedin machineauth loginname ControlURL RouteAll ExitNodeIP ExitNodeAllowLANAccess CorpDNS RunSSH RunWebClient WantRunning LoggedOut ShieldsUp AdvertiseTags Hostname AdvertiseRoutes NoSNAT NoStatefulFiltering NetfilterMode OperatorUser AutoUpdateCheck AutoUpdateApply AppConnector PostureChecking ProfileName'

ts_prefs_defaults() {
	# ipn.NewPrefs() on linux
	S__machinekey=
	S_nodekey=
	S_loggedin=false
	S_machineauth=
	S_loginname=
	S_ControlURL=
	S_RouteAll=false
	S_ExitNodeIP=
	S_ExitNodeAllowLANAccess=false
	S_CorpDNS=true
	S_RunSSH=false
	S_RunWebClient=false
	S_WantRunning=false
	S_LoggedOut=false
	S_ShieldsUp=false
	S_AdvertiseTags=
	S_Hostname=
	S_AdvertiseRoutes=
	S_NoSNAT=false
	S_NoStatefulFiltering=true
	S_NetfilterMode=2
	S_OperatorUser=
	S_AutoUpdateCheck=true
	S_AutoUpdateApply=
	S_AppConnector=false
	S_PostureChecking=false
	S_ProfileName=
}

ts_state_load() {
	ts_prefs_defaults
	[ -f "$1" ] || return 0
	while IFS= read -r _line; do
		case "$_line" in
		*'": "'*)
			_k=${_line#*\"}
			_k=${_k%%\"*}
			_v=${_line#*\": \"}
			_v=${_v%\"*}
			case " $TS_STATE_KEYS " in *" $_k "*) eval "S_$_k=\$_v" ;; esac
			;;
		esac
	done <"$1"
}

ts_state_save() {
	_f=$1
	_tmp="$_f.tmp.$$"
	{
		printf '{\n'
		printf '\t"_fleetlab": "%s",\n' "$TS_STANDIN_LABEL"
		for _k in $TS_STATE_KEYS; do
			eval "_v=\$S_$_k"
			printf '\t"%s": "%s",\n' "$_k" "$_v"
		done
		printf '\t"_version": "%s"\n}\n' "$TS_STANDIN_VERSION"
	} >"$_tmp" && chmod 600 "$_tmp" && mv -f "$_tmp" "$_f"
}

# Node identity derived from the node key (stable while the key is): public key, node ID, Tailscale IPs.
ts_node_public() { printf 'nodekey:%s' "$(ts_sha256 "pub:$S_nodekey")"; }
ts_node_id() { printf 'n%sCNTRL' "$(ts_sha256 "id:$S_nodekey" | cut -c1-12)"; }
ts_ip4() {
	_h=$(ts_sha256 "ip:$S_nodekey")
	_a=$((0x$(printf '%s' "$_h" | cut -c1-2)))
	_b=$((0x$(printf '%s' "$_h" | cut -c3-4)))
	_c=$((0x$(printf '%s' "$_h" | cut -c5-6)))
	printf '100.%d.%d.%d' $((64 + _a % 64)) "$_b" $((1 + _c % 254))
}
ts_ip6() {
	_h=$(ts_sha256 "ip:$S_nodekey")
	printf 'fd7a:115c:a1e0::%s:%s' "$(printf '%s' "$_h" | cut -c1-4 | sed 's/^0*//;s/^$/0/')" \
		"$(printf '%s' "$_h" | cut -c5-8 | sed 's/^0*//;s/^$/0/')"
}

# dirname without forking: "/x" -> "/", "x" -> ".", "/a/b" -> "/a".
ts_dirname() {
	case "$1" in
	*/*) _d=${1%/*}; printf '%s' "${_d:-/}" ;;
	*) printf '.' ;;
	esac
}

ts_os_hostname() {
	if [ -r /proc/sys/kernel/hostname ]; then cat /proc/sys/kernel/hostname; else hostname 2>/dev/null || uname -n; fi
}

# --- the stand-in's "control server" ------------------------------------------------------------------------
# Resolves "file:PATH" like resolveValueFromFile (trimmed contents); the key itself is never written anywhere.
ts_resolve_key() {
	case "$1" in
	file:*)
		_kf=${1#file:}
		if [ ! -r "$_kf" ]; then
			TS_LOGIN_ERR="open $_kf: no such file or directory"
			return 1
		fi
		TS_KEY=$(tr -d ' \t\r\n' <"$_kf")
		;;
	*) TS_KEY=$1 ;;
	esac
	return 0
}

# Log in with an auth key: tskey-auth-* keys are accepted (or only those whose sha256 is listed in
# $TS_CTL_DIR/auth-keys.sha256 when that file exists); tskey-client-* (OAuth) needs tags; anything else is
# refused the way control refuses an unknown key. On success the S_* login fields are set (caller saves).
ts_standin_login() {
	TS_LOGIN_ERR=
	ts_resolve_key "$1" || return 1
	case "$TS_KEY" in
	tskey-auth-?*) ;;
	tskey-client-?*)
		if [ -z "$2" ]; then
			TS_LOGIN_ERR="oauth authkeys require --advertise-tags"
			return 1
		fi
		;;
	*)
		TS_LOGIN_ERR="invalid key: API key does not exist"
		return 1
		;;
	esac
	if [ -f "$TS_CTL_DIR/auth-keys.sha256" ] && ! grep -qx "$(ts_sha256 "$TS_KEY")" "$TS_CTL_DIR/auth-keys.sha256"; then
		TS_LOGIN_ERR="invalid key: API key does not exist"
		return 1
	fi
	TS_KEY=
	S_loggedin=true
	S_LoggedOut=false
	if [ -n "$2" ]; then S_loginname=tagged-devices; else S_loginname=fleetlab@example.com; fi
	if [ -f "$TS_CTL_DIR/machine-auth-required" ]; then S_machineauth=pending; else S_machineauth=; fi
	return 0
}

# ipn.State as the backend would report it.
ts_backend_state() {
	if [ "$S_loggedin" != true ]; then
		printf 'NeedsLogin'
	elif [ "$S_machineauth" = pending ]; then
		printf 'NeedsMachineAuth'
	elif [ "$S_WantRunning" != true ]; then
		printf 'Stopped'
	else
		printf 'Running'
	fi
}
