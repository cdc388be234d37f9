# shellcheck shell=sh
# Helpers both inits use (copied into L1's and L2's initramfs as /common.sh).

# arg NAME DEFAULT: the value of NAME=... on the kernel command line, else DEFAULT.
arg() {
    for w in $(cat /proc/cmdline); do
        case $w in "$1"=*)
            echo "${w#*=}"
            return
            ;;
        esac
    done
    echo "$2"
}
