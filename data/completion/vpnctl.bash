# bash completion for vpnctl, the command-line client of vpnd.   -*- shell-script -*-
#
# Commands and options are listed here; a unit test keeps them equal to
# vpnctl's own parser. Server names and profile ids come from vpnd through
# `vpnctl __complete`, which prints nothing on any failure, does not start
# vpnd, and gives up after a second or two. Needs bash 4 or later; works
# with or without the bash-completion package.

_vpnctl_commands='add list login renew profiles messages connect answer status monitor disconnect location remove autoconnect discover'

# The options of each command; "" for those before the command.
_vpnctl_options() {
    case $1 in
        '') echo '--help --version --system' ;;
        add) echo '--help --system --org --access-server --user --autologin --remember --password-stdin --token-url' ;;
        list) echo '--help --system --json' ;;
        login) echo '--help --system --no-browser --timeout --user --autologin --remember --password-stdin --token-url' ;;
        renew) echo '--help --system --no-browser --timeout' ;;
        profiles) echo '--help --system --json' ;;
        messages) echo '--help --system --json' ;;
        connect) echo '--help --system --profile --tcp --no-wait --no-browser --timeout' ;;
        answer) echo '--help --no-browser' ;;
        status) echo '--help --json --watch' ;;
        monitor) echo '--help --notify' ;;
        disconnect) echo '--help --no-wait --timeout' ;;
        location) echo '--help --system --server --json' ;;
        remove) echo '--help --system' ;;
        autoconnect) echo '--help --system --profile --off' ;;
        discover) echo '--help --kind --limit --json' ;;
    esac
}

# Options followed by a value: the word after one is neither a command nor an argument.
_vpnctl_takes_value=' --org --user --token-url --timeout --profile --server --kind --limit '

# Commands whose first argument is a server.
_vpnctl_server_commands=' login renew profiles messages connect remove autoconnect '

_vpnctl() {
    local -a words candidates=()
    local cword
    if [[ -n ${COMP_LINE-} ]]; then
        # Split the line here: COMP_WORDS would break a server's URL apart at ':'.
        local line=${COMP_LINE:0:${COMP_POINT:-${#COMP_LINE}}}
        read -r -a words <<< "$line"
        if [[ -z $line || $line == *[[:space:]] ]]; then
            words+=('')
        fi
        cword=$(( ${#words[@]} - 1 ))
    else
        cword=$COMP_CWORD
        words=("${COMP_WORDS[@]:0:cword+1}")
    fi
    local prog=${words[0]} cur=${words[cword]} prev=''
    (( cword > 0 )) && prev=${words[cword-1]}

    local command='' server='' system='' word i arguments=0
    for (( i = 1; i < cword; i++ )); do
        word=${words[i]}
        case $word in
            --system) system=--system ;;
            --*=*) ;;
            -*) [[ $_vpnctl_takes_value == *" $word "* ]] && (( i += 1 )) ;;
            *)
                if [[ -z $command ]]; then
                    command=$word
                else
                    (( arguments == 0 )) && server=$word
                    (( arguments += 1 ))
                fi
                ;;
        esac
    done

    if [[ -n $command && $_vpnctl_takes_value == *" $prev "* ]]; then
        case $prev in
            --profile)
                [[ -n $server ]] && mapfile -t candidates < <(_vpnctl_ask "$prog" profiles "$server" $system)
                ;;
            --server) mapfile -t candidates < <(_vpnctl_ask "$prog" servers $system) ;;
            --kind) candidates=(institute-access organization secure-internet) ;;
        esac
    elif [[ $cur == -* ]]; then
        read -r -a candidates <<< "$(_vpnctl_options "$command")"
    elif [[ -z $command ]]; then
        read -r -a candidates <<< "$_vpnctl_commands"
    elif (( arguments == 0 )) && [[ $_vpnctl_server_commands == *" $command "* ]]; then
        mapfile -t candidates < <(_vpnctl_ask "$prog" servers $system)
    fi

    COMPREPLY=()
    # bash replaces only the part of the word after its last ':' (a URL's).
    local before=''
    [[ $cur == *:* && ${COMP_WORDBREAKS-:} == *:* ]] && before=${cur%"${cur##*:}"}
    for word in "${candidates[@]}"; do
        [[ $word == "$cur"* ]] && COMPREPLY+=("${word#"$before"}")
    done
    return 0
}

# One candidate per line from vpnd; nothing at all when it cannot say.
_vpnctl_ask() {
    local prog=$1
    shift
    "$prog" __complete "$@" 2>/dev/null
}

complete -F _vpnctl vpnctl
