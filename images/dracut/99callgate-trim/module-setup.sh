#!/bin/bash
# callgate — dracut module, run last: takes out of the initrd what the modules before it
# bring and this initrd never uses. A smaller initrd is a smaller UKI, which the firmware
# reads, checks under Secure Boot and measures into the TPM at every boot, and which the
# kernel then unpacks: all of it before the baseline ruleset is in (slow under QEMU TCG).
#
# - udev's hardware database (13 MB): names and key maps for devices; nothing in the
#   initrd matches on it (the root's disk is found by partition UUID).
# - Of the device mapper (`dm` brings all of drivers/md): only dm-mod, dm-verity and
#   what dm-verity needs (dm-bufio) stay. RAID, multipath, caches, snapshots, thin pools,
#   dm-crypt (the state disk is opened by the running system) and the cluster lock
#   manager they pull in go.

check() {
    # only when asked for (images/dracut/callgate.conf)
    return 255
}

depends() {
    return 0
}

install() {
    rm -f "$initdir/usr/lib/udev/hwdb.bin" "$initdir/etc/udev/hwdb.bin"
    local mods="$initdir/usr/lib/modules/$kernel/kernel"
    if [[ -d "$mods/drivers/md" ]]; then
        find "$mods/drivers/md" -name '*.ko*' ! -name 'dm-mod.ko*' ! -name 'dm-verity.ko*' \
            ! -name 'dm-bufio.ko*' -delete
        find "$mods/drivers/md" -depth -type d -empty -delete
    fi
    rm -rf "$mods/fs/dlm"
}
