#!/bin/bash
# callgate — dracut module: the baseline ruleset from the initrd
# (callgate-initrd-baseline.service). The initrd carries the unit, `nft` with its
# libraries, and the kernel's nftables modules the baseline needs (loaded early by
# systemd-modules-load, so neither nft nor the kernel's own module requests wait for
# them). The ruleset itself is not made here: the base root (and so this initrd) is built
# and cached before the firmware, so scripts/image renders it from the image's config and
# appends it to the initrd as a cpio of its own (/usr/lib/callgate/baseline.json).

check() {
    # only when asked for (images/dracut/callgate.conf)
    return 255
}

depends() {
    echo systemd
}

installkernel() {
    # What the baseline's table uses: nf_tables (chains, sets, counters, payload and meta
    # matches), conntrack state (nft_ct) and its dependencies.
    hostonly='' instmods nf_tables nf_conntrack nft_ct
}

install() {
    inst_simple "$moddir/callgate-initrd-baseline.service" \
        "$systemdsystemunitdir/callgate-initrd-baseline.service"
    inst_multiple nft sh
    # nft reads protocol names (`meta l4proto`) through the C library: /etc/protocols.
    inst_multiple -o /etc/protocols /etc/services
    mkdir -p "$initdir/usr/lib/modules-load.d"
    printf '%s\n' nf_tables nf_conntrack nft_ct >"$initdir/usr/lib/modules-load.d/callgate-baseline.conf"
    mkdir -p "$initdir$systemdsystemunitdir/sysinit.target.wants"
    ln_r "$systemdsystemunitdir/callgate-initrd-baseline.service" \
        "$systemdsystemunitdir/sysinit.target.wants/callgate-initrd-baseline.service"
}
