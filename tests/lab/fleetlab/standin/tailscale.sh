# shellcheck shell=sh disable=SC2034,SC2154,SC1007,SC2018,SC2019,SC2086,SC2046,SC2016,SC2217
# (a fragment: variables are set and read through eval across fragments; field splitting of flag lists and
#  ASCII-only tr ranges are intended, as in the real CLI's hostname rules)
# tailscale CLI stand-in body (the builder puts the header and common.sh above this).
# It reads and writes the daemon's state file directly, but only while that daemon is alive, so every command
# that needs tailscaled fails exactly like the real CLI when it is not running.

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

# fixTailscaledConnectError (cmd/tailscale/cli/diag.go), linux branch.
ts_connect() {
	if ! ts_daemon_alive "$TS_SOCKET"; then
		_hint=
		if command -v systemctl >/dev/null 2>&1; then _hint=' (sudo systemctl start tailscaled ?)'; fi
		ts_err "failed to connect to local tailscaled; it doesn't appear to be running$_hint"
		exit 1
	fi
	# The daemon writes its state path once the backend exists; give a just-started daemon a moment.
	_i=0
	while :; do
		TS_STATE_FILE=$(sed -n 's/^state=//p' "$TS_SOCKET" 2>/dev/null)
		[ -n "$TS_STATE_FILE" ] && break
		_i=$((_i + 1))
		if [ $_i -gt 50 ] || ! ts_daemon_alive "$TS_SOCKET"; then
			ts_err "Failed to connect to local Tailscale daemon for /localapi/v0/status; not running? Error: backend not ready"
			exit 1
		fi
		sleep 0.2 2>/dev/null || sleep 1
	done
	TS_TUN=$(sed -n 's/^tun=//p' "$TS_SOCKET")
	# local.SetVersionMismatchHandler: an upgraded CLI talking to a daemon not yet restarted says so.
	_dv=$(sed -n 's/^version=//p' "$TS_SOCKET")
	if [ -n "$_dv" ] && [ "$_dv" != "$TS_STANDIN_VERSION" ]; then
		_sv=$TS_STANDIN_VERSION
		TS_STANDIN_VERSION=$_dv
		_dlong=$(ts_long_version)
		TS_STANDIN_VERSION=$_sv
		ts_err "Warning: client version \"$(ts_long_version)\" != tailscaled server version \"$_dlong\""
	fi
	TS_AUTHURL_FILE="$TS_SOCKET.authurl"
	ts_load
}

ts_load() {
	ts_state_load "$TS_STATE_FILE"
	# An admin "approves" the machine by removing the lab's machine-auth-required file.
	if [ "$S_machineauth" = pending ] && [ ! -f "$TS_CTL_DIR/machine-auth-required" ]; then
		S_machineauth=
		ts_save
	fi
}
ts_save() {
	if ! _e=$(ts_state_save "$TS_STATE_FILE" 2>&1); then
		ts_err "$_e"
		exit 1
	fi
}

ts_fatalf() {
	# log.Fatalf with flags 0: message (newline added if missing), exit 1.
	printf '%s\n' "$*" >&2
	exit 1
}

ts_effective_hostname() {
	if [ -n "$S_Hostname" ]; then printf '%s' "$S_Hostname"; else ts_os_hostname; fi
}

ts_auth_url() {
	_cu=${S_ControlURL:-$TS_DEFAULT_CONTROL}
	case "$_cu" in
	https://controlplane.tailscale.com | https://login.tailscale.com)
		printf 'https://login.tailscale.com/a/%s' "$(ts_sha256 "auth:$S_nodekey" | cut -c1-12)"
		;;
	*) printf '%s/register/%s' "${_cu%/}" "$(ts_node_public)" ;;
	esac
}
ts_admin_url() {
	_cu=${S_ControlURL:-$TS_DEFAULT_CONTROL}
	case "$_cu" in
	https://controlplane.tailscale.com | https://login.tailscale.com) printf 'https://login.tailscale.com/admin' ;;
	*) printf '%s/admin' "${_cu%/}" ;;
	esac
}

ts_netfilter_name() {
	case "$1" in 0) printf off ;; 1) printf nodivert ;; *) printf on ;; esac
}

# --- status --json ------------------------------------------------------------------------------------------
ts_status_json() {
	_st=$(ts_backend_state)
	_in=false
	[ "$S_loggedin" = true ] && _in=true
	_online=false
	[ "$_st" = Running ] && _online=true
	_tun=false
	[ "$TS_TUN" != userspace-networking ] && _tun=true
	_authurl=
	[ "$_st" = NeedsLogin ] && [ -f "$TS_AUTHURL_FILE" ] && _authurl=$(cat "$TS_AUTHURL_FILE")
	_host=$(ts_effective_hostname)
	_label=$(printf '%s' "$_host" | tr 'A-Z' 'a-z' | sed 's/[^a-z0-9-]/-/g')
	if [ "$_in" = true ]; then
		_ips="$(ts_ip4),$(ts_ip6)"
		_allowed="$(ts_ip4)/32,$(ts_ip6)/128"
		_id=$(ts_node_id)
		_dns="$_label.$TS_MAGICDNS_SUFFIX."
		_uid=$((0x$(ts_sha256 "user:$S_loginname" | cut -c1-8)))
	else
		_ips=
		_allowed=
		_id=
		_dns=
		_uid=0
	fi
	case "$_st" in
	NeedsLogin) _health='[
		"You are logged out."
	]' ;;
	Stopped) _health='[
		"Tailscale is stopped."
	]' ;;
	*) _health='[]' ;;
	esac
	printf '{\n'
	printf '  "Version": "%s",\n' "$(ts_long_version)"
	printf '  "TUN": %s,\n' "$_tun"
	printf '  "BackendState": "%s",\n' "$_st"
	printf '  "HaveNodeKey": %s,\n' "$_in"
	printf '  "AuthURL": "%s",\n' "$_authurl"
	printf '  "TailscaleIPs": %s,\n' "$(ts_json_list "$_ips" '  ')"
	printf '  "Self": {\n'
	printf '    "ID": "%s",\n' "$_id"
	printf '    "PublicKey": "%s",\n' "$(ts_node_public)"
	printf '    "HostName": "%s",\n' "$_host"
	printf '    "DNSName": "%s",\n' "$_dns"
	printf '    "OS": "linux",\n'
	printf '    "UserID": %s,\n' "$_uid"
	printf '    "TailscaleIPs": %s,\n' "$(ts_json_list "$_ips" '    ')"
	printf '    "AllowedIPs": %s,\n' "$(ts_json_list "$_allowed" '    ')"
	if [ "$_in" = true ] && [ -n "$S_AdvertiseTags" ]; then
		printf '    "Tags": %s,\n' "$(ts_json_list "$S_AdvertiseTags" '    ')"
	fi
	printf '    "Addrs": null,\n    "CurAddr": "",\n    "Relay": "",\n'
	printf '    "RxBytes": 0,\n    "TxBytes": 0,\n'
	printf '    "Created": "0001-01-01T00:00:00Z",\n    "LastWrite": "0001-01-01T00:00:00Z",\n'
	printf '    "LastSeen": "0001-01-01T00:00:00Z",\n    "LastHandshake": "0001-01-01T00:00:00Z",\n'
	printf '    "Online": %s,\n' "$_online"
	printf '    "ExitNode": false,\n'
	case ",$S_AdvertiseRoutes," in *,0.0.0.0/0,*) _exitopt=true ;; *) _exitopt=false ;; esac
	printf '    "ExitNodeOption": %s,\n' "$_exitopt"
	printf '    "Active": false,\n    "PeerAPIURL": null,\n'
	printf '    "InNetworkMap": %s,\n    "InMagicSock": false,\n    "InEngine": false\n' "$_in"
	printf '  },\n'
	printf '  "Health": %s,\n' "$(printf '%s' "$_health" | sed 's/^\t\t/    /;s/^\t]/  ]/')"
	if [ "$_in" = true ]; then
		printf '  "MagicDNSSuffix": "%s",\n' "$TS_MAGICDNS_SUFFIX"
		printf '  "CurrentTailnet": {\n    "Name": "%s",\n    "MagicDNSSuffix": "%s",\n    "MagicDNSEnabled": true\n  },\n' \
			"$TS_MAGICDNS_SUFFIX" "$TS_MAGICDNS_SUFFIX"
	else
		printf '  "MagicDNSSuffix": "",\n  "CurrentTailnet": null,\n'
	fi
	printf '  "CertDomains": null,\n  "Peer": null,\n'
	if [ "$_in" = true ]; then
		printf '  "User": {\n    "%s": {\n      "ID": %s,\n      "LoginName": "%s",\n      "DisplayName": "%s",\n      "ProfilePicURL": ""\n    }\n  },\n' \
			"$_uid" "$_uid" "$S_loginname" "${S_loginname%@*}"
	else
		printf '  "User": null,\n'
	fi
	printf '  "ClientVersion": null\n}\n'
}

ts_cmd_status() {
	ts_parse_flags "tailscale status" "json=b web=b listen=s browser=b active=b self=b peers=b header=b" "$@"
	ts_connect
	if [ "${F_json:-false}" = true ]; then
		ts_status_json
		return 0
	fi
	case "$(ts_backend_state)" in
	NeedsLogin)
		printf 'Logged out.\n'
		[ -f "$TS_AUTHURL_FILE" ] && printf '\nLog in at: %s\n' "$(cat "$TS_AUTHURL_FILE")"
		exit 1
		;;
	Stopped)
		printf 'Tailscale is stopped.\n'
		exit 1
		;;
	NeedsMachineAuth)
		printf 'Machine is not yet approved by tailnet admin.\n'
		exit 1
		;;
	esac
	printf '%-15s %-20s %-12s %-7s %s\n' "$(ts_ip4)" "$(ts_effective_hostname | tr 'A-Z' 'a-z')" \
		"${S_loginname%@*}@" linux -
}

# --- debug prefs (json.MarshalIndent(prefs, "", "\t")) ------------------------------------------------------
ts_cmd_debug() {
	_sub=${1:-}
	[ $# -gt 0 ] && shift
	case "$_sub" in
	prefs)
		ts_parse_flags "tailscale debug prefs" "pretty=b" "$@"
		ts_connect
		_t=$(printf '\t')
		printf '{\n'
		printf '\t"ControlURL": "%s",\n' "$S_ControlURL"
		printf '\t"RouteAll": %s,\n' "$S_RouteAll"
		printf '\t"ExitNodeID": "",\n'
		printf '\t"ExitNodeIP": "%s",\n' "$S_ExitNodeIP"
		printf '\t"InternalExitNodePrior": "",\n'
		printf '\t"ExitNodeAllowLANAccess": %s,\n' "$S_ExitNodeAllowLANAccess"
		printf '\t"CorpDNS": %s,\n' "$S_CorpDNS"
		printf '\t"RunSSH": %s,\n' "$S_RunSSH"
		printf '\t"RunWebClient": %s,\n' "$S_RunWebClient"
		printf '\t"WantRunning": %s,\n' "$S_WantRunning"
		printf '\t"LoggedOut": %s,\n' "$S_LoggedOut"
		printf '\t"ShieldsUp": %s,\n' "$S_ShieldsUp"
		printf '\t"AdvertiseTags": %s,\n' "$(ts_json_list "$S_AdvertiseTags" "$_t")"
		printf '\t"Hostname": "%s",\n' "$S_Hostname"
		printf '\t"NotepadURLs": false,\n'
		printf '\t"AdvertiseRoutes": %s,\n' "$(ts_json_list "$S_AdvertiseRoutes" "$_t")"
		printf '\t"AdvertiseServices": null,\n'
		printf '\t"Sync": "",\n'
		printf '\t"NoSNAT": %s,\n' "$S_NoSNAT"
		printf '\t"NoStatefulFiltering": %s,\n' "$S_NoStatefulFiltering"
		printf '\t"NetfilterMode": %s,\n' "$S_NetfilterMode"
		[ -n "$S_OperatorUser" ] && printf '\t"OperatorUser": "%s",\n' "$S_OperatorUser"
		[ -n "$S_ProfileName" ] && printf '\t"ProfileName": "%s",\n' "$S_ProfileName"
		printf '\t"AutoUpdate": {\n\t\t"Check": %s,\n\t\t"Apply": %s\n\t},\n' "$S_AutoUpdateCheck" "${S_AutoUpdateApply:-null}"
		printf '\t"AppConnector": {\n\t\t"Advertise": %s\n\t},\n' "$S_AppConnector"
		printf '\t"PostureChecking": %s,\n' "$S_PostureChecking"
		printf '\t"NetfilterKind": "",\n'
		printf '\t"DriveShares": null,\n'
		printf '\t"AllowSingleHosts": true,\n'
		if [ "$S_loggedin" = true ]; then
			printf '\t"Config": {\n\t\t"PrivateNodeKey": "privkey:0000000000000000000000000000000000000000000000000000000000000000",\n'
			printf '\t\t"OldPrivateNodeKey": "privkey:0000000000000000000000000000000000000000000000000000000000000000",\n'
			printf '\t\t"UserProfile": {\n\t\t\t"ID": %s,\n\t\t\t"LoginName": "%s",\n\t\t\t"DisplayName": "%s"\n\t\t},\n' \
				"$((0x$(ts_sha256 "user:$S_loginname" | cut -c1-8)))" "$S_loginname" "${S_loginname%@*}"
			printf '\t\t"NetworkLockKey": "nlpriv:0000000000000000000000000000000000000000000000000000000000000000",\n'
			printf '\t\t"NodeID": "%s"\n\t}\n}\n' "$(ts_node_id)"
		else
			printf '\t"Config": null\n}\n'
		fi
		;;
	'')
		ts_err "see 'tailscale debug --help"
		exit 1
		;;
	*)
		ts_err "tailscale debug: unknown subcommand: $_sub ($TS_STANDIN_LABEL implements only 'debug prefs')"
		exit 1
		;;
	esac
}

# warnOnAdvertiseRoutes / netutil.CheckIPForwarding: a warning on stdout, never an error. Skipped in userspace
# mode, where netstack forwards (as the real LocalAPI does).
ts_warn_forwarding() {
	[ -n "$1" ] || return 0
	[ "$TS_TUN" = userspace-networking ] && return 0
	_want4=false
	_want6=false
	case ",$1," in *.*/*) _want4=true ;; esac
	case ",$1," in *:*/*) _want6=true ;; esac
	_v4=$(cat /proc/sys/net/ipv4/ip_forward 2>/dev/null)
	_v6=$(cat /proc/sys/net/ipv6/conf/all/forwarding 2>/dev/null)
	_kb='See https://tailscale.com/s/ip-forwarding'
	[ "$_v4" = 1 ] && [ "$_v6" = 1 ] && return 0
	if [ "$_want4" = true ] && [ "$_v4" != 1 ]; then
		printf 'Warning: IP forwarding is disabled, subnet routing/exit nodes will not work.\n%s\n' "$_kb"
	elif [ "$_want6" = true ] && [ "$_v6" != 1 ]; then
		printf 'Warning: IPv6 forwarding is disabled, subnet routing/exit nodes may not work.\n%s\n' "$_kb"
	fi
}

# --- up / login ---------------------------------------------------------------------------------------------
UP_SPEC='qr=b qr-format=s auth-key=s audience=s client-id=s client-secret=s id-token=s login-server=s accept-routes=b accept-dns=b host-routes=b exit-node=s exit-node-allow-lan-access=b shields-up=b ssh=b advertise-tags=s hostname=s advertise-routes=s advertise-connector=b advertise-exit-node=b report-posture=b operator=s snat-subnet-routes=b stateful-filtering=b netfilter-mode=s timeout=d json=b reset=b force-reauth=b accept-risk=s'
LOGIN_SPEC='qr=b qr-format=s auth-key=s audience=s client-id=s client-secret=s id-token=s login-server=s accept-routes=b accept-dns=b host-routes=b exit-node=s exit-node-allow-lan-access=b shields-up=b ssh=b advertise-tags=s hostname=s advertise-routes=s advertise-connector=b advertise-exit-node=b report-posture=b operator=s snat-subnet-routes=b stateful-filtering=b netfilter-mode=s timeout=d nickname=s'
# The flags prefsToFlags compares ("up checker"), in the order Go's flag.VisitAll walks them (sorted).
UP_PREF_FLAGS='accept-dns accept-routes advertise-connector advertise-exit-node advertise-routes advertise-tags exit-node exit-node-allow-lan-access hostname login-server netfilter-mode operator report-posture shields-up snat-subnet-routes ssh stateful-filtering'

ts_is_login_synonym() {
	case "$1" in https://login.tailscale.com | https://controlplane.tailscale.com) return 0 ;; *) return 1 ;; esac
}
ts_not() { if [ "$1" = true ]; then printf false; else printf true; fi; }
ts_has_exit_routes() { case ",$1," in *,0.0.0.0/0,* | *,::/0,*) return 0 ;; *) return 1 ;; esac; }
ts_without_exit_routes() {
	printf '%s' "$1" | tr ',' '\n' | grep -v -x -e '0.0.0.0/0' -e '::/0' | tr '\n' ',' | sed 's/,$//'
}
ts_go_duration() {
	# milliseconds -> time.Duration.String() for the common cases
	_ms=$1
	if [ "$_ms" = 0 ]; then printf '0s'; return; fi
	if [ $((_ms % 1000)) != 0 ]; then printf '%sms' "$_ms"; return; fi
	_s=$((_ms / 1000))
	_h=$((_s / 3600))
	_m=$(((_s % 3600) / 60))
	_s=$((_s % 60))
	if [ $_h -gt 0 ]; then printf '%dh%dm%ds' $_h $_m $_s
	elif [ $_m -gt 0 ]; then printf '%dm%ds' $_m $_s
	else printf '%ds' $_s; fi
}
ts_quote() {
	case "$1" in *[!A-Za-z0-9_.:/@,+=%-]*) printf "'%s'" "$1" ;; *) printf '%s' "$1" ;; esac
}
# fmtFlagValueArg
ts_fmt_flag() {
	case "$2" in
	true) printf -- '--%s' "$1" ;;
	'') printf -- '--%s=' "$1" ;;
	*) printf -- '--%s=%s' "$1" "$(ts_quote "$2")" ;;
	esac
}

# The value the "up checker" sees for a pref flag, from the S_ (current) or N_ (new) prefs.
ts_flag_val() {
	_p=$1
	eval "_RunSSH=\$${_p}_RunSSH _ControlURL=\$${_p}_ControlURL _RouteAll=\$${_p}_RouteAll _CorpDNS=\$${_p}_CorpDNS"
	eval "_ShieldsUp=\$${_p}_ShieldsUp _ExitNodeIP=\$${_p}_ExitNodeIP _Lan=\$${_p}_ExitNodeAllowLANAccess"
	eval "_Tags=\$${_p}_AdvertiseTags _Hostname=\$${_p}_Hostname _Op=\$${_p}_OperatorUser _Routes=\$${_p}_AdvertiseRoutes"
	eval "_Conn=\$${_p}_AppConnector _NoSNAT=\$${_p}_NoSNAT _NoSF=\$${_p}_NoStatefulFiltering _NF=\$${_p}_NetfilterMode"
	eval "_Posture=\$${_p}_PostureChecking"
	case "$2" in
	ssh) printf '%s' "$_RunSSH" ;;
	login-server) printf '%s' "$_ControlURL" ;;
	accept-routes) printf '%s' "$_RouteAll" ;;
	accept-dns) printf '%s' "$_CorpDNS" ;;
	shields-up) printf '%s' "$_ShieldsUp" ;;
	exit-node) printf '%s' "$_ExitNodeIP" ;;
	exit-node-allow-lan-access) printf '%s' "$_Lan" ;;
	advertise-tags) printf '%s' "$_Tags" ;;
	hostname) printf '%s' "$_Hostname" ;;
	operator) printf '%s' "$_Op" ;;
	advertise-routes) ts_without_exit_routes "$_Routes" ;;
	advertise-exit-node) if ts_has_exit_routes "$_Routes"; then printf true; else printf false; fi ;;
	advertise-connector) printf '%s' "$_Conn" ;;
	snat-subnet-routes) ts_not "$_NoSNAT" ;;
	stateful-filtering) if [ "$_NoSF" = true ]; then printf false; else printf true; fi ;;
	netfilter-mode) ts_netfilter_name "$_NF" ;;
	report-posture) printf '%s' "$_Posture" ;;
	esac
}

ts_apply_new_prefs() {
	# Copy N_* (all, or only those behind the given flags) onto S_*.
	if [ "$1" = all ]; then
		_flags=$UP_PREF_FLAGS
	else
		_flags=$FSET
	fi
	for _f in $_flags; do
		case "$_f" in
		ssh) S_RunSSH=$N_RunSSH ;;
		login-server) S_ControlURL=$N_ControlURL ;;
		accept-routes) S_RouteAll=$N_RouteAll ;;
		accept-dns) S_CorpDNS=$N_CorpDNS ;;
		shields-up) S_ShieldsUp=$N_ShieldsUp ;;
		exit-node) S_ExitNodeIP=$N_ExitNodeIP ;;
		exit-node-allow-lan-access) S_ExitNodeAllowLANAccess=$N_ExitNodeAllowLANAccess ;;
		advertise-tags) S_AdvertiseTags=$N_AdvertiseTags ;;
		hostname) S_Hostname=$N_Hostname ;;
		operator) S_OperatorUser=$N_OperatorUser ;;
		advertise-routes | advertise-exit-node) S_AdvertiseRoutes=$N_AdvertiseRoutes ;;
		advertise-connector) S_AppConnector=$N_AppConnector ;;
		snat-subnet-routes) S_NoSNAT=$N_NoSNAT ;;
		stateful-filtering) S_NoStatefulFiltering=$N_NoStatefulFiltering ;;
		netfilter-mode) S_NetfilterMode=$N_NetfilterMode ;;
		report-posture) S_PostureChecking=$N_PostureChecking ;;
		esac
	done
	S_WantRunning=true
}

ts_netfilter_from_flag() {
	case "$1" in
	on) N_NetfilterMode=2 ;;
	nodivert)
		N_NetfilterMode=1
		printf 'Warning: netfilter=nodivert; add iptables calls to ts-* chains manually.\n'
		;;
	off)
		N_NetfilterMode=0
		printf 'Warning: netfilter=off; configure iptables yourself.\n'
		;;
	*) return 1 ;;
	esac
}

ts_check_safe_flags() {
	for _f in $FSET; do
		_var=$(printf '%s' "$_f" | tr '-' '_')
		eval "_v=\${F_$_var}"
		if ! ts_safe_value "$_v"; then
			ts_fatalf "invalid value for --$_f: the fleetlab stand-in accepts only [A-Za-z0-9_.:/@,+=~%- ] here"
		fi
	done
}

ts_wait_running() {
	# Waits like runUp's IPN bus watch: until Running, or --timeout.
	_printed=$1
	_deadline_ms=$2
	_waited=0
	_approval_printed=0
	while :; do
		ts_load
		_st=$(ts_backend_state)
		if [ "$_st" = Running ]; then
			[ "$_printed" = 1 ] && [ "${F_json:-false}" != true ] && printf 'Success.\n' >&2
			[ "${F_json:-false}" = true ] && printf '{\n  "BackendState": "Running"\n}\n'
			return 0
		fi
		if [ "$_st" = NeedsMachineAuth ] && [ $_approval_printed = 0 ]; then
			_approval_printed=1
			_printed=1
			if [ "${F_json:-false}" = true ]; then
				printf '{\n  "BackendState": "NeedsMachineAuth"\n}\n'
			else
				printf '\nTo approve your machine, visit (as admin):\n\n\t%s\n\n' "$(ts_admin_url)" >&2
			fi
		fi
		if ! ts_daemon_alive "$TS_SOCKET"; then
			ts_err "Failed to connect to local Tailscale daemon for /localapi/v0/watch-ipn-bus; not running? Error: EOF"
			exit 1
		fi
		if [ "$_deadline_ms" -gt 0 ] && [ "$_waited" -ge "$_deadline_ms" ]; then
			ts_err 'timeout waiting for Tailscale service to enter a Running state; check health with "tailscale status"'
			exit 1
		fi
		sleep 0.2 2>/dev/null || sleep 1
		_waited=$((_waited + 200))
	done
}

ts_cmd_up() {
	_cmd=$1
	shift
	F_login_server=$TS_DEFAULT_CONTROL F_accept_routes=false F_accept_dns=true F_shields_up=false F_ssh=false
	F_exit_node= F_exit_node_allow_lan_access=false F_advertise_tags= F_hostname= F_advertise_routes=
	F_advertise_connector=false F_advertise_exit_node=false F_report_posture=false F_operator=
	F_snat_subnet_routes=true F_stateful_filtering=false F_netfilter_mode=on F_timeout=0 F_json=false F_reset=false
	F_force_reauth=false F_auth_key= F_client_secret=
	if [ "$_cmd" = login ]; then
		ts_parse_flags "tailscale login" "$LOGIN_SPEC" "$@"
	else
		ts_parse_flags "tailscale up" "$UP_SPEC" "$@"
	fi
	shift "$FCONSUMED"
	if [ $# -gt 0 ]; then
		_q=
		for _a in "$@"; do _q="$_q${_q:+ }\"$_a\""; done
		ts_fatalf "too many non-flag arguments: [$_q]"
	fi
	TS_TIMEOUT_MS=$(ts_duration_ms "$F_timeout")
	ts_connect
	_st=$(ts_backend_state)

	# prefsFromUpArgs
	_routes=$F_advertise_routes
	if [ "$F_advertise_exit_node" = true ]; then _routes="${_routes:+$_routes,}0.0.0.0/0,::/0"; fi
	if [ -n "$_routes" ]; then
		_r=$(ts_check_routes "$_routes") || exit 1
		_routes=$_r
	fi
	if [ -z "$F_exit_node" ] && [ "$F_exit_node_allow_lan_access" = true ]; then
		ts_fatalf "--exit-node-allow-lan-access can only be used with --exit-node"
	fi
	ts_check_tags "$F_advertise_tags" || exit 1
	ts_check_hostname "$F_hostname" || exit 1
	ts_check_safe_flags
	if [ -n "$F_exit_node" ]; then
		case "$F_exit_node" in
		auto:*) ;;
		*[!0-9.]*) ts_fatalf "invalid value \"$F_exit_node\" for --exit-node; must be IP or unique node name" ;;
		*)
			if [ "$F_exit_node" = "$(ts_ip4)" ]; then
				ts_fatalf "cannot use $F_exit_node as an exit node as it is a local IP address to this machine; did you mean --advertise-exit-node?"
			fi
			[ "$_st" = Running ] && ts_fatalf "no node found in netmap with IP $F_exit_node"
			;;
		esac
	fi
	N_ControlURL=$F_login_server N_RouteAll=$F_accept_routes N_CorpDNS=$F_accept_dns N_ShieldsUp=$F_shields_up
	N_RunSSH=$F_ssh N_ExitNodeIP=$F_exit_node N_ExitNodeAllowLANAccess=$F_exit_node_allow_lan_access
	N_AdvertiseTags=$F_advertise_tags N_Hostname=$F_hostname N_OperatorUser=$F_operator N_AdvertiseRoutes=$_routes
	N_AppConnector=$F_advertise_connector N_PostureChecking=$F_report_posture
	N_NoSNAT=$(ts_not "$F_snat_subnet_routes") N_NoStatefulFiltering=$(ts_not "$F_stateful_filtering")
	if ! ts_netfilter_from_flag "$F_netfilter_mode"; then
		ts_fatalf "invalid value --netfilter-mode=\"$F_netfilter_mode\""
	fi
	ts_warn_forwarding "$_routes"

	# updatePrefs
	if [ "$F_reset" != true ]; then
		# applyImplicitPrefs: keep the operator when it is the current user and not mentioned.
		if [ -z "$N_OperatorUser" ] && [ -n "$S_OperatorUser" ] && [ "$S_OperatorUser" = "${USER:-}" ] &&
			! ts_flag_set operator; then
			N_OperatorUser=$S_OperatorUser
		fi
		# checkForAccidentalSettingReverts
		if [ -n "$S_ControlURL" ]; then
			if [ "$FSET" = ' ' ] && [ "$S_loggedin" = true ] && [ "$_st" != NeedsLogin ]; then
				# A bare "tailscale up" only brings the network back up.
				S_WantRunning=true
				ts_save
				ts_wait_running 0 "$TS_TIMEOUT_MS"
				return 0
			fi
			_missing=
			for _f in $UP_PREF_FLAGS; do
				ts_flag_set "$_f" && continue
				_cur=$(ts_flag_val S "$_f")
				_new=$(ts_flag_val N "$_f")
				[ "$_cur" = "$_new" ] && continue
				if [ "$_f" = login-server ] && ts_is_login_synonym "$_cur" && ts_is_login_synonym "$_new"; then continue; fi
				if [ "$_f" = stateful-filtering ] && [ "$_cur" = true ] && [ "$_new" = false ]; then continue; fi
				_missing="$_missing$(ts_fmt_flag "$_f" "$_cur")
"
			done
			if [ -n "$_missing" ]; then
				_explicit=
				for _f in $(printf '%s\n' $FSET | sort); do
					_var=$(printf '%s' "$_f" | tr '-' '_')
					eval "_v=\${F_$_var}"
					case " $UP_SPEC " in
					*" $_f=b "*) if [ "$_v" = false ]; then _a="--$_f=false"; else _a="--$_f"; fi ;;
					*" $_f=d "*) _a="--$_f=$(ts_go_duration "$(ts_duration_ms "$_v")")" ;;
					*) _a=$(ts_fmt_flag "$_f" "$_v") ;;
					esac
					_explicit="$_explicit $_a"
				done
				_sorted=$(printf '%s' "$_missing" | LC_ALL=C sort | tr '\n' ' ' | sed 's/ $//')
				{
					printf "Error: changing settings via 'tailscale up' requires mentioning all\n"
					printf 'non-default flags. To proceed, either re-run your command with --reset or\n'
					printf 'use the command below to explicitly mention the current value of\n'
					printf 'all non-default settings:\n\n'
					printf '\ttailscale up%s %s\n\n' "$_explicit" "$_sorted"
				} >&2
				exit 1
			fi
		fi
	fi

	_url_changed=false
	if [ "$S_ControlURL" != "$N_ControlURL" ] && ! { ts_is_login_synonym "$S_ControlURL" && ts_is_login_synonym "$N_ControlURL"; }; then
		_url_changed=true
	fi
	if [ "$_url_changed" = true ] && [ "$_st" = Running ] && [ "$F_force_reauth" != true ]; then
		ts_fatalf "can't change --login-server without --force-reauth"
	fi
	_tags_changed=false
	[ "$S_AdvertiseTags" != "$N_AdvertiseTags" ] && _tags_changed=true
	_key=$F_auth_key
	[ -z "$_key" ] && _key=$F_client_secret

	if [ "$_st" = Running ] && [ "$F_force_reauth" != true ] && [ -z "$_key" ] && [ "$_url_changed" = false ] &&
		[ "$_tags_changed" = false ]; then
		# justEdit: EditPrefs with the mentioned flags (all of them with --reset).
		if [ "$F_reset" = true ]; then ts_apply_new_prefs all; else ts_apply_new_prefs visited; fi
		ts_save
		return 0
	fi

	_need_login=false
	if [ "$S_loggedin" != true ] || [ "$F_force_reauth" = true ] || [ "$_url_changed" = true ] ||
		[ "$_tags_changed" = true ]; then
		_need_login=true
	fi
	if [ "$_need_login" = true ] && [ -n "$_key" ]; then
		# Validate before touching anything: a refused key leaves the node as it was.
		_saved_tags=$S_AdvertiseTags
		if ! ts_standin_login "$_key" "$N_AdvertiseTags"; then
			S_AdvertiseTags=$_saved_tags
			case "$TS_LOGIN_ERR" in
			open\ *) ts_err "$TS_LOGIN_ERR" ;;
			oauth*) ts_err "$TS_LOGIN_ERR" ;;
			*) ts_err "backend error: $TS_LOGIN_ERR" ;;
			esac
			exit 1
		fi
		ts_apply_new_prefs all
		rm -f "$TS_AUTHURL_FILE"
		ts_save
		ts_wait_running 0 "$TS_TIMEOUT_MS"
		return 0
	fi
	# Start(UpdatePrefs) without a usable key: prefs apply, then interactive login if needed.
	ts_apply_new_prefs all
	if [ "$_need_login" = true ]; then
		S_loggedin=false
		ts_save
		_url=$(ts_auth_url)
		printf '%s\n' "$_url" >"$TS_AUTHURL_FILE"
		if [ "$F_json" = true ]; then
			printf '{\n  "AuthURL": "%s",\n  "BackendState": "NeedsLogin"\n}\n' "$_url"
		else
			printf '\nTo authenticate, visit:\n\n\t%s\n\n' "$_url" >&2
		fi
		ts_wait_running 1 "$TS_TIMEOUT_MS"
		return 0
	fi
	ts_save
	ts_wait_running 0 "$TS_TIMEOUT_MS"
}

# --- set ----------------------------------------------------------------------------------------------------
SET_SPEC='nickname=s accept-routes=b accept-dns=b exit-node=s exit-node-allow-lan-access=b shields-up=b ssh=b hostname=s advertise-routes=s advertise-exit-node=b advertise-connector=b update-check=b auto-update=b report-posture=b webclient=b sync=b relay-server-port=s relay-server-static-endpoints=s operator=s snat-subnet-routes=b stateful-filtering=b netfilter-mode=s linux-fwmark-mask=s linux-subnet-route-mark=s linux-bypass-mark=s accept-risk=s'
ts_cmd_set() {
	ts_parse_flags "tailscale set" "$SET_SPEC" "$@"
	shift "$FCONSUMED"
	if [ $# -gt 0 ]; then
		_q=
		for _a in "$@"; do _q="$_q${_q:+ }\"$_a\""; done
		ts_fatalf "too many non-flag arguments: [$_q]"
	fi
	ts_connect
	if [ "$FSET" = ' ' ]; then
		ts_flag_usage "tailscale set" "$SET_SPEC"
		return 0
	fi
	ts_check_safe_flags
	if ts_flag_set netfilter-mode; then
		ts_netfilter_from_flag "$F_netfilter_mode" || {
			ts_err "invalid value --netfilter-mode=\"$F_netfilter_mode\""
			exit 1
		}
		S_NetfilterMode=$N_NetfilterMode
	fi
	if ts_flag_set hostname; then
		ts_check_hostname "$F_hostname" || exit 1
		S_Hostname=$F_hostname
	fi
	if ts_flag_set advertise-routes || ts_flag_set advertise-exit-node; then
		# calcAdvertiseRoutesForSet
		if ts_flag_set advertise-routes; then
			_base=$F_advertise_routes
		else
			_base=$(ts_without_exit_routes "$S_AdvertiseRoutes")
		fi
		if ts_flag_set advertise-exit-node; then
			_exit=$F_advertise_exit_node
		elif ts_has_exit_routes "$S_AdvertiseRoutes"; then
			_exit=true
		else
			_exit=false
		fi
		[ "$_exit" = true ] && _base="${_base:+$_base,}0.0.0.0/0,::/0"
		if [ -n "$_base" ]; then
			_r=$(ts_check_routes "$_base") || exit 1
			_base=$_r
		fi
		S_AdvertiseRoutes=$_base
		ts_warn_forwarding "$_base"
	fi
	ts_flag_set accept-routes && S_RouteAll=$F_accept_routes
	ts_flag_set accept-dns && S_CorpDNS=$F_accept_dns
	ts_flag_set shields-up && S_ShieldsUp=$F_shields_up
	ts_flag_set ssh && S_RunSSH=$F_ssh
	ts_flag_set webclient && S_RunWebClient=$F_webclient
	ts_flag_set operator && S_OperatorUser=$F_operator
	ts_flag_set nickname && S_ProfileName=$F_nickname
	ts_flag_set exit-node-allow-lan-access && S_ExitNodeAllowLANAccess=$F_exit_node_allow_lan_access
	ts_flag_set advertise-connector && S_AppConnector=$F_advertise_connector
	ts_flag_set report-posture && S_PostureChecking=$F_report_posture
	ts_flag_set update-check && S_AutoUpdateCheck=$F_update_check
	ts_flag_set auto-update && S_AutoUpdateApply=$F_auto_update
	ts_flag_set snat-subnet-routes && S_NoSNAT=$(ts_not "$F_snat_subnet_routes")
	ts_flag_set stateful-filtering && S_NoStatefulFiltering=$(ts_not "$F_stateful_filtering")
	if ts_flag_set exit-node; then
		case "$F_exit_node" in
		'') S_ExitNodeIP= ;;
		*[!0-9.]*) ts_err "invalid value \"$F_exit_node\" for --exit-node; must be IP or unique node name"; exit 1 ;;
		*)
			if [ "$(ts_backend_state)" = Running ]; then
				ts_err "no node found in netmap with IP $F_exit_node"
				exit 1
			fi
			S_ExitNodeIP=$F_exit_node
			;;
		esac
	fi
	ts_save
}

ts_cmd_down() {
	ts_parse_flags "tailscale down" "accept-risk=s reason=s" "$@"
	ts_connect
	if [ "$(ts_backend_state)" = Stopped ]; then
		printf 'Tailscale was already stopped.\n' >&2
		return 0
	fi
	S_WantRunning=false
	ts_save
}

ts_cmd_logout() {
	ts_parse_flags "tailscale logout" "reason=s" "$@"
	ts_connect
	S_loggedin=false
	S_LoggedOut=true
	S_WantRunning=false
	S_machineauth=
	S_loginname=
	# Logging out discards the node key; the next login registers a new one (the machine key stays).
	S_nodekey="privkey:$(ts_random_hex)"
	rm -f "$TS_AUTHURL_FILE"
	ts_save
}

ts_cmd_ip() {
	F_4=false F_6=false F_1=false
	ts_parse_flags "tailscale ip" "4=b 6=b 1=b" "$@"
	ts_connect
	if [ "$S_loggedin" != true ]; then
		ts_err "no current Tailscale IPs; state: $(ts_backend_state)"
		exit 1
	fi
	if [ "$F_6" != true ]; then ts_ip4; printf '\n'; fi
	if [ "$F_4" != true ] && [ "$F_1" != true ]; then ts_ip6; printf '\n'; fi
	if [ "$F_6" = true ]; then ts_ip6; printf '\n'; fi
}

ts_cmd_version() {
	F_json=false F_daemon=false
	ts_parse_flags "tailscale version" "daemon=b json=b upstream=b" "$@"
	if [ "$F_json" = true ]; then
		printf '{\n  "majorMinorPatch": "%s",\n  "short": "%s",\n  "long": "%s",\n  "gitCommit": "%s",\n  "cap": 0,\n  "standin": "%s"\n}\n' \
			"$TS_STANDIN_VERSION" "$TS_STANDIN_VERSION" "$(ts_long_version)" "$(ts_commit)" "$TS_STANDIN_LABEL"
		return 0
	fi
	ts_print_version
	if [ "$F_daemon" = true ]; then
		ts_connect
		printf '  Daemon: %s\n' "$(sed -n 's/^version=//p' "$TS_SOCKET")"
	fi
}

ts_root_usage() {
	cat >&2 <<EOF
The easiest, most secure way to use WireGuard.

USAGE
  tailscale [flags] <subcommand> [command flags]

SUBCOMMANDS
  up          Connect to Tailscale, logging in if needed
  down        Disconnect from Tailscale
  set         Change specified preferences
  login       Log in to a Tailscale account
  logout      Disconnect from Tailscale and expire current node key
  ip          Show Tailscale IP addresses
  status      Show state of tailscaled and its connections
  version     Print Tailscale version
  debug       Debug commands (only 'debug prefs' here)

FLAGS
  --socket string
        path to tailscaled socket (default $TS_DEFAULT_SOCKET)

$TS_STANDIN_LABEL: POSIX sh scripts from the fleetlab test lab that imitate the tailscale CLI.
EOF
}

# --- main ---------------------------------------------------------------------------------------------------
# CleanUpArgs: --authkey is an alias of --auth-key.
for _a do
	shift
	case "$_a" in
	--authkey | -authkey) _a=--auth-key ;;
	--authkey=* | -authkey=*) _a="--auth-key=${_a#*=}" ;;
	esac
	set -- "$@" "$_a"
done
if [ $# -eq 1 ]; then
	case "$1" in
	-V | --version) set -- version ;;
	help) set -- --help ;;
	esac
fi
F_socket=$TS_DEFAULT_SOCKET
if [ "${1:-}" = --help ] || [ "${1:-}" = -h ] || [ "${1:-}" = -help ]; then
	ts_root_usage
	exit 0
fi
ts_parse_flags tailscale "socket=s json-docs=b" "$@"
shift "$FCONSUMED"
TS_SOCKET=$F_socket
if [ $# -eq 0 ]; then
	ts_root_usage
	exit 0
fi
_sub=$1
shift
case "$_sub" in
up) ts_cmd_up up "$@" ;;
login) ts_cmd_up login "$@" ;;
set) ts_cmd_set "$@" ;;
down) ts_cmd_down "$@" ;;
logout) ts_cmd_logout "$@" ;;
status) ts_cmd_status "$@" ;;
ip) ts_cmd_ip "$@" ;;
debug) ts_cmd_debug "$@" ;;
version) ts_cmd_version "$@" ;;
get | switch | configure | netcheck | dns | metrics | ping | nc | ssh | funnel | serve | web | file | bugreport | cert | lock | licenses | exit-node | update | whois | whoami | drive | id-token | wait)
	ts_err "tailscale $_sub: not implemented by the $TS_STANDIN_LABEL"
	exit 1
	;;
*)
	ts_err "tailscale: unknown subcommand: $_sub"
	exit 1
	;;
esac
exit 0
