#!/bin/bash
# callgate — dracut module: /etc as an overlay on the read-only, verified root.
# The lower layer is the image's /etc (under dm-verity); the upper layer is in memory
# (/run/callgate-etc) in this slice of the image: the accounts the daemon makes, the SSH host
# keys and the machine id live until the next boot. A later slice puts the upper layer on
# the TPM-sealed state partition.

check() {
    # only when asked for (images/dracut/callgate.conf)
    return 255
}

depends() {
    echo systemd
}

installkernel() {
    hostonly='' instmods overlay
}

install() {
    inst_simple "$moddir/callgate-etc-overlay.service" "$systemdsystemunitdir/callgate-etc-overlay.service"
    inst_multiple mkdir mount
    mkdir -p "$initdir$systemdsystemunitdir/initrd-root-fs.target.requires"
    ln_r "$systemdsystemunitdir/callgate-etc-overlay.service" \
        "$systemdsystemunitdir/initrd-root-fs.target.requires/callgate-etc-overlay.service"
}
