# shellcheck shell=sh disable=SC2034,SC2154,SC1007,SC2018,SC2019,SC2086,SC2046,SC2016,SC2217
# (a fragment: variables are set and read through eval across fragments; field splitting of flag lists and
#  ASCII-only tr ranges are intended, as in the real CLI's hostname rules)
# tailscaled stand-in body (the builder puts the header and common.sh above this).
# A long-lived foreground process that owns the state file and the "socket" the CLI talks to. The socket path
# is a regular file naming the daemon's pid and settings (busybox sh cannot create a unix socket): wait for it
# with `test -e` or `tailscale status`, which work with real releases as well.

# Hidden helper run by `nc -e` for each proxy connection (real tailscaled also has a be-child subcommand).
ts_proxy_child() {
	_b=$(dd bs=1 count=1 2>/dev/null | od -An -tu1 | tr -d ' \n')
	if [ "$_b" = 5 ]; then
		# SOCKS5 greeting: VER NMETHODS METHODS...; answer "no authentication required".
		_n=$(dd bs=1 count=1 2>/dev/null | od -An -tu1 | tr -d ' \n')
		[ -n "$_n" ] && [ "$_n" -gt 0 ] && dd bs=1 count="$_n" >/dev/null 2>&1
		printf '\005\000'
		# Request: VER CMD RSV ATYP ADDR PORT. The lab stand-in has no tailnet to dial into: general failure.
		_hdr=$(dd bs=1 count=4 2>/dev/null | od -An -tu1)
		set -- $_hdr
		case "${4:-}" in
		1) dd bs=1 count=6 >/dev/null 2>&1 ;;
		4) dd bs=1 count=18 >/dev/null 2>&1 ;;
		3)
			_l=$(dd bs=1 count=1 2>/dev/null | od -An -tu1 | tr -d ' \n')
			dd bs=1 count=$((${_l:-0} + 2)) >/dev/null 2>&1
			;;
		esac
		printf '\005\001\000\001\000\000\000\000\000\000'
		exit 0
	fi
	# Anything else is treated as HTTP (proxymux does the same split): read the header, answer 502.
	while IFS= read -r _line; do
		case "$_line" in '' | "$(printf '\r')") break ;; esac
	done
	_body="fleetlab stand-in tailscaled: no tailnet to proxy to ($TS_STANDIN_LABEL)"
	printf 'HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s\n' \
		$((${#_body} + 1)) "$_body"
	exit 0
}

if [ "${1:-}" = be-child ]; then
	case "${2:-}" in
	fleetlab-proxy) ts_proxy_child ;;
	*)
		printf '%s\n' "unknown be-child mode \"${2:-}\"" >&2
		exit 1
		;;
	esac
fi

TSD_ARGS="$*"
TSD_SPEC='verbose=s cleanup=b debug=s socks5-server=s outbound-http-proxy-listen=s tun=s port=s state=s statedir=s socket=s bird-socket=s version=b no-logs-no-support=b config=s'
F_tun=tailscale0
F_socket=$TS_DEFAULT_SOCKET
F_state=
F_statedir=
F_port=${PORT:-0}
F_version=false
F_cleanup=false
F_config=
F_socks5_server=
F_outbound_http_proxy_listen=
ts_parse_flags tailscaled "$TSD_SPEC" "$@"
shift "$FCONSUMED"
if [ $# -gt 0 ]; then
	ts_log "tailscaled does not take non-flag arguments: [$*]"
	exit 1
fi
if [ "$F_version" = true ]; then
	ts_print_version
	exit 0
fi
if [ -z "$F_socket" ]; then
	ts_err '--socket is required'
	exit 1
fi
case "$F_port" in
'' | *[!0-9]*)
	ts_err "invalid value \"$F_port\" for flag -port: parse error"
	exit 2
	;;
esac
if [ -z "$F_state" ] && [ -z "$F_statedir" ]; then F_state=$TS_DEFAULT_STATE; fi

# Logs: TS_LOGS_DIR, then systemd's STATE_DIRECTORY, then /var/lib/tailscale, then a temp dir (logpolicy order).
ts_logs_dir() {
	if [ -n "${TS_LOGS_DIR:-}" ]; then
		printf '%s' "$TS_LOGS_DIR"
		return
	fi
	if [ -n "${STATE_DIRECTORY:-}" ]; then
		printf '%s' "${STATE_DIRECTORY%%:*}"
		return
	fi
	if mkdir -p /var/lib/tailscale 2>/dev/null && [ -w /var/lib/tailscale ]; then
		printf '/var/lib/tailscale'
		return
	fi
	printf '%s' "${TMPDIR:-/tmp}"
}
TS_LOGS=$(ts_logs_dir)
if mkdir -p "$TS_LOGS" 2>/dev/null && : >>"$TS_LOGS/tailscaled.log1.txt" 2>/dev/null; then
	TS_LOG_FILE="$TS_LOGS/tailscaled.log1.txt"
	[ -f "$TS_LOGS/tailscaled.log.conf" ] ||
		printf '{"Collection":"tailscaled.log.tailscale.io","PrivateID":"%s","PublicID":"%s"}\n' \
			"$(ts_random_hex)" "$(ts_random_hex)" >"$TS_LOGS/tailscaled.log.conf" 2>/dev/null || :
else
	ts_log "logpolicy: cannot write logs to $TS_LOGS; logging to stderr only"
fi
ts_log "logtail started"
ts_log "Program starting: v$(ts_long_version), Go none: [$0 $TSD_ARGS] ($TS_STANDIN_LABEL)"
ts_log "LogID: $(ts_sha256 "$TS_LOGS" | cut -c1-64)"

if [ "$F_cleanup" = true ]; then
	ts_log "dns: [rc=unknown ret=direct]"
	ts_log "dns: using \"direct\" mode"
	exit 0
fi

# --- config file (declarative "alpha0") ---------------------------------------------------------------------
# Flattens JSON (hujson comments allowed) to "key<TAB>value" lines with lowercased top-level keys; arrays are
# joined with commas. Go's encoding/json matches keys case-insensitively, so the stand-in does too.
ts_conf_flatten() {
	sed -e 's://.*$::' "$1" | awk '
	BEGIN { RS = "\001" }
	{
		s = $0; i = 1; n = length(s); depth = 0; key = ""; expect = "key"
		while (i <= n) {
			c = substr(s, i, 1)
			if (c ~ /[ \t\r\n,:]/) { i++; continue }
			if (c == "{") { depth++; i++; if (depth > 1 && key != "") { objkey = key } ; continue }
			if (c == "}") { depth--; i++; key = ""; continue }
			if (c == "[") {
				j = index(substr(s, i), "]"); if (j == 0) { err = 1; break }
				arr = substr(s, i + 1, j - 2); gsub(/[" \t\r\n]/, "", arr)
				if (depth == 1) print tolower(key) "\t" arr
				key = ""; i += j; continue
			}
			if (c == "\"") {
				j = i + 1; val = ""
				while (j <= n && substr(s, j, 1) != "\"") { if (substr(s, j, 1) == "\\") j++; val = val substr(s, j, 1); j++ }
				if (j > n) { err = 1; break }
				i = j + 1
				rest = substr(s, i); sub(/^[ \t\r\n]*/, "", rest)
				if (substr(rest, 1, 1) == ":" && key == "") { key = val; continue }
				if (depth == 1) print tolower(key) "\t" val
				else if (depth == 2) print tolower(objkey) "." tolower(key) "\t" val
				key = ""; continue
			}
			if (match(substr(s, i), /^(true|false|null|-?[0-9.]+)/)) {
				val = substr(s, i, RLENGTH); i += RLENGTH
				if (depth == 1) print tolower(key) "\t" val
				else if (depth == 2) print tolower(objkey) "." tolower(key) "\t" val
				key = ""; continue
			}
			err = 1; break
		}
		if (err || depth != 0) { print "invalid character in JSON" > "/dev/stderr"; exit 1 }
	}'
}

ts_conf_get() { printf '%s\n' "$TS_CONF_FLAT" | awk -F '\t' -v k="$1" '$1 == k { print $2; found = 1 } END { exit !found }'; }
ts_conf_bool() {
	# opt.Bool: JSON true/false or "true"/"false"; prints nothing when unset.
	_cb=$(ts_conf_get "$1") || return 0
	case "$_cb" in true | false) printf '%s' "$_cb" ;; null | '') ;; *) printf 'invalid' ;; esac
}

TS_CONF_FLAT=
if [ -n "$F_config" ]; then
	if [ ! -r "$F_config" ]; then
		ts_log "error reading config file: open $F_config: no such file or directory"
		exit 1
	fi
	if ! TS_CONF_FLAT=$(ts_conf_flatten "$F_config" 2>&1); then
		ts_log "error reading config file: error parsing config file $F_config: $TS_CONF_FLAT"
		exit 1
	fi
	_cv=$(ts_conf_get version || :)
	if [ "$_cv" != alpha0 ]; then
		ts_log "error reading config file: unsupported config file version \"$_cv\""
		exit 1
	fi
fi

# --- socket (safesocket.Listen) -----------------------------------------------------------------------------
ts_daemon_alive() {
	[ -f "$1" ] || return 1
	_p=$(sed -n 's/^pid=//p' "$1")
	[ -n "$_p" ] || return 1
	if [ -d /proc/self ]; then
		grep -q tailscaled "/proc/$_p/cmdline" 2>/dev/null
	else
		kill -0 "$_p" 2>/dev/null
	fi
}
if ts_daemon_alive "$F_socket"; then
	ts_log "safesocket.Listen: unix $F_socket: address already in use"
	exit 1
fi
if ! mkdir -p "$(ts_dirname "$F_socket")" 2>/dev/null; then
	ts_log "safesocket.Listen: mkdir $(ts_dirname "$F_socket"): permission denied"
	exit 1
fi

TS_CHILDREN=
TS_MEMSTATE=
ts_shutdown() {
	for _c in $TS_CHILDREN; do kill "$_c" 2>/dev/null || :; done
	if [ "$(sed -n 's/^pid=//p' "$F_socket" 2>/dev/null)" = "$$" ]; then rm -f "$F_socket"; fi
	[ -n "$TS_MEMSTATE" ] && rm -f "$TS_MEMSTATE"
}
ts_fatal() {
	ts_log "$*"
	ts_shutdown
	exit 1
}
trap 'ts_log "tailscaled got signal terminated; shutting down"; ts_shutdown; exit 0' TERM
trap 'ts_log "tailscaled got signal interrupt; shutting down"; ts_shutdown; exit 0' INT

{
	printf 'pid=%s\n' "$$"
	printf 'version=%s\n' "$TS_STANDIN_VERSION"
} >"$F_socket"

# --- proxy listeners (mustStartProxyListeners) --------------------------------------------------------------
ts_host_port() {
	# "localhost:1080" / "127.0.0.1:1080" / ":1080" / "[::1]:1080" -> HOST PORT
	_hp=$1
	_port=${_hp##*:}
	_host=${_hp%:*}
	_host=${_host#[}
	_host=${_host%]}
	[ "$_host" = localhost ] && _host=127.0.0.1
	printf '%s %s' "${_host:-0.0.0.0}" "$_port"
}
ts_addr_is_local() {
	case "$1" in 0.0.0.0 | :: | '') return 0 ;; esac
	if command -v ip >/dev/null 2>&1; then
		ip -o addr show 2>/dev/null | awk '{ split($4, a, "/"); print a[1] }' | grep -qx "$1"
	else
		return 0
	fi
}
ts_start_listener() {
	# $1 label for errors, $2 listen address
	set -- "$1" "$2" $(ts_host_port "$2")
	_lhost=$3
	_lport=$4
	case "$_lport" in
	'' | *[!0-9]* | 0) ts_fatal "$1: listen tcp $2: the fleetlab stand-in needs a fixed port" ;;
	esac
	if ! ts_addr_is_local "$_lhost"; then
		ts_fatal "$1: listen tcp $_lhost:$_lport: bind: cannot assign requested address"
	fi
	if ! command -v nc >/dev/null 2>&1; then
		ts_log "$1: stand-in has no nc on PATH; listener on $2 not started"
		return 0
	fi
	# busybox nc cannot bind one address; it listens on all of them (the stand-in checks the address exists).
	nc -ll -p "$_lport" -e "$0" be-child fleetlab-proxy </dev/null >/dev/null 2>&1 &
	_nc=$!
	sleep 1
	if ! kill -0 "$_nc" 2>/dev/null; then
		ts_fatal "$1: listen tcp $_lhost:$_lport: bind: address already in use"
	fi
	TS_CHILDREN="$TS_CHILDREN $_nc"
	if [ "$1" = "SOCKS5 listener" ]; then ts_log "SOCKS5 listening on $_lhost:$_lport"; fi
	if [ "$1" = "HTTP proxy listener" ]; then ts_log "HTTP proxy listening on $_lhost:$_lport"; fi
}
if [ -n "$F_socks5_server" ]; then ts_start_listener "SOCKS5 listener" "$F_socks5_server"; fi
if [ -n "$F_outbound_http_proxy_listen" ] && [ "$F_outbound_http_proxy_listen" != "$F_socks5_server" ]; then
	ts_start_listener "HTTP proxy listener" "$F_outbound_http_proxy_listen"
fi

# --- engine (createEngine / tryEngine) ----------------------------------------------------------------------
ts_try_engine() {
	_name=$1
	if [ "$_name" = userspace-networking ]; then
		return 0
	fi
	# tstun.New: the tun device node must exist and open.
	if [ ! -e "$TS_TUN_DEV" ]; then
		ts_log "Linux kernel version: $(uname -r)"
		ts_log "is CONFIG_TUN enabled in your kernel? \`modprobe tun\` failed with: modprobe: can't change directory to '/lib/modules': No such file or directory"
		TS_ENGINE_ERR="tstun.New(\"$_name\"): CreateTUN(\"$_name\") failed; $TS_TUN_DEV does not exist"
		return 1
	fi
	if ! { : <>"$TS_TUN_DEV"; } 2>/dev/null; then
		if [ -c "$TS_TUN_DEV" ]; then
			TS_ENGINE_ERR="tstun.New(\"$_name\"): CreateTUN(\"$_name\") failed; open $TS_TUN_DEV: no such device"
		else
			TS_ENGINE_ERR="tstun.New(\"$_name\"): CreateTUN(\"$_name\") failed; open $TS_TUN_DEV: permission denied"
		fi
		return 1
	fi
	# router.New: the iptables binary (TS_DEBUG_FIREWALL_MODE=nftables talks netlink and needs none).
	if [ "${TS_DEBUG_FIREWALL_MODE:-}" = nftables ]; then
		ts_log "router: using nftables (TS_DEBUG_FIREWALL_MODE=nftables)"
		return 0
	fi
	if ! command -v iptables >/dev/null 2>&1; then
		TS_ENGINE_ERR='exec: "iptables": executable file not found in $PATH'
		return 1
	fi
	_rc=0
	_ipt_out=$(iptables --version 2>&1) || _rc=$?
	if [ "$_rc" != 0 ]; then
		TS_ENGINE_ERR="creating router: running [iptables --version]: exit status $_rc: $_ipt_out"
		return 1
	fi
	ts_log "router: using iptables ($_ipt_out)"
	return 0
}
TS_TUN_MODE=
TS_ENGINE_ERRS=
_old_ifs=$IFS
IFS=,
for _tn in $F_tun; do
	IFS=$_old_ifs
	ts_log "wgengine.NewUserspaceEngine(tun \"$_tn\") ..."
	TS_ENGINE_ERR=
	if ts_try_engine "$_tn"; then
		TS_TUN_MODE=$_tn
		break
	fi
	ts_log "wgengine.NewUserspaceEngine(tun \"$_tn\") error: $TS_ENGINE_ERR"
	TS_ENGINE_ERRS="${TS_ENGINE_ERRS:+$TS_ENGINE_ERRS; }$TS_ENGINE_ERR"
done
IFS=$_old_ifs
if [ -z "$F_tun" ]; then TS_ENGINE_ERRS='no --tun value specified'; fi
if [ -z "$TS_TUN_MODE" ]; then
	ts_log "flushing log."
	ts_log "logger closing down"
	ts_fatal "getLocalBackend error: createEngine: $TS_ENGINE_ERRS"
fi

# --- store (store.New) --------------------------------------------------------------------------------------
case "$F_state" in
mem:*)
	TS_MEMSTATE="$F_socket.mem-state"
	rm -f "$TS_MEMSTATE"
	TS_STATE_FILE=$TS_MEMSTATE
	;;
'') TS_STATE_FILE="$F_statedir/tailscaled.state" ;;
*) TS_STATE_FILE=$F_state ;;
esac
if ! _mk=$(mkdir -p "$(ts_dirname "$TS_STATE_FILE")" 2>&1); then
	ts_fatal "getLocalBackend error: store.New: creating state directory: $_mk"
fi
ts_state_load "$TS_STATE_FILE"
_changed=0
# Keys are made once and kept: the same state file means the same node across restarts.
if [ -z "$S__machinekey" ]; then S__machinekey="privkey:$(ts_random_hex)"; _changed=1; fi
if [ -z "$S_nodekey" ]; then S_nodekey="privkey:$(ts_random_hex)"; _changed=1; fi

# Declarative config: applied as masked prefs at every start (ConfigVAlpha.ToPrefs).
TS_CONF_AUTHKEY=
if [ -n "$TS_CONF_FLAT" ]; then
	_en=$(ts_conf_bool enabled)
	if [ "$_en" != false ]; then S_WantRunning=true; else S_WantRunning=false; fi
	if _v=$(ts_conf_get serverurl); then S_ControlURL=$_v; fi
	if _v=$(ts_conf_get hostname); then S_Hostname=$_v; fi
	if _v=$(ts_conf_get operatoruser); then S_OperatorUser=$_v; fi
	_b=$(ts_conf_bool acceptdns); [ -n "$_b" ] && S_CorpDNS=$_b
	_b=$(ts_conf_bool acceptroutes); [ -n "$_b" ] && S_RouteAll=$_b
	_b=$(ts_conf_bool runsshserver); [ -n "$_b" ] && S_RunSSH=$_b
	_b=$(ts_conf_bool runwebclient); [ -n "$_b" ] && S_RunWebClient=$_b
	_b=$(ts_conf_bool shieldsup); [ -n "$_b" ] && S_ShieldsUp=$_b
	_b=$(ts_conf_bool disablesnat); [ -n "$_b" ] && S_NoSNAT=$_b
	_b=$(ts_conf_bool nostatefulfiltering); [ -n "$_b" ] && S_NoStatefulFiltering=$_b
	_b=$(ts_conf_bool posturechecking); [ -n "$_b" ] && S_PostureChecking=$_b
	if _v=$(ts_conf_get advertiseroutes); then
		if ! _r=$(ts_check_routes "$_v" 2>&1); then ts_fatal "error reading config file: $_r"; fi
		S_AdvertiseRoutes=$_r
	fi
	if _v=$(ts_conf_get netfiltermode); then
		case "$_v" in
		on) S_NetfilterMode=2 ;; nodivert) S_NetfilterMode=1 ;; off) S_NetfilterMode=0 ;;
		*) ts_fatal "error reading config file: invalid netfilter mode \"$_v\"" ;;
		esac
	fi
	if _v=$(ts_conf_get authkey) && [ -n "$_v" ]; then TS_CONF_AUTHKEY=$_v; S_LoggedOut=false; fi
	for _k in S_ControlURL S_Hostname S_OperatorUser; do
		eval "_v=\$$_k"
		ts_safe_value "$_v" || ts_fatal "error reading config file: unsupported characters in a value"
	done
	_changed=1
fi
if [ "$_changed" = 1 ] && ! _sv=$(ts_state_save "$TS_STATE_FILE" 2>&1); then
	ts_fatal "getLocalBackend error: store.New: $_sv"
fi

{
	printf 'pid=%s\n' "$$"
	printf 'version=%s\n' "$TS_STANDIN_VERSION"
	printf 'state=%s\n' "$TS_STATE_FILE"
	printf 'tun=%s\n' "$TS_TUN_MODE"
	printf 'port=%s\n' "$F_port"
	printf 'socks5=%s\n' "$F_socks5_server"
	printf 'httpproxy=%s\n' "$F_outbound_http_proxy_listen"
	printf 'config=%s\n' "$F_config"
	printf 'logs=%s\n' "$TS_LOGS"
} >"$F_socket.tmp.$$" && mv -f "$F_socket.tmp.$$" "$F_socket"
ts_log "got LocalBackend in 1ms"
# The release's unit is Type=notify: tell systemd we are up, as tailscaled does through sd_notify. As root,
# systemd-notify --pid sends with our pid as the sender, so NotifyAccess=main accepts it.
if [ -n "${NOTIFY_SOCKET:-}" ] && command -v systemd-notify >/dev/null 2>&1; then
	systemd-notify --ready --pid="$$" --status="$TS_STANDIN_LABEL" || ts_log "systemd-notify failed"
fi
ts_log "Start: using state $TS_STATE_FILE, tun $TS_TUN_MODE"

# A config file with an auth key logs in when the node needs it (the CLI does the same work for `up`).
if [ -n "$TS_CONF_AUTHKEY" ] && [ "$S_loggedin" != true ]; then
	if ts_standin_login "$TS_CONF_AUTHKEY" "$S_AdvertiseTags"; then
		ts_state_save "$TS_STATE_FILE"
		ts_log "control: authRoutine: state:authenticated"
	else
		ts_log "control: authRoutine: $TS_LOGIN_ERR"
	fi
fi

while :; do
	sleep 1 </dev/null >/dev/null 2>&1 &
	wait $! || :
	# The state file may have been removed from under us (e.g. a test wiping the device); keep running.
done
