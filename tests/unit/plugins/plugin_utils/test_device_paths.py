"""_device_paths: checked absolute device paths, the rootfs staging dir, in-image paths and mount types."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleActionFail
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._device_paths import (
    NO_MODE_FS,
    device_path,
    mount_types,
    staging_root,
    unroot,
)


def test_device_paths_are_absolute_and_go_below_the_root() -> None:
    assert device_path("/usr/bin/x", "files.dest") == "/usr/bin/x"
    assert device_path("/usr/bin/x", "files.dest", "/img") == "/img/usr/bin/x"


@pytest.mark.parametrize("bad", ["usr/bin", "/a/../b", "/a/..", "/a/", "/a\nb"])
def test_bad_device_paths_name_the_option(bad: str) -> None:
    with pytest.raises(AnsibleActionFail, match=r"^links\.path: .* must be an absolute path"):
        device_path(bad, "links.path")


def test_staging_root() -> None:
    assert staging_root("") == "" and staging_root(None) == ""
    assert staging_root("/build/image/") == "/build/image"
    with pytest.raises(AnsibleActionFail, match="'/' is not a staging dir"):
        staging_root("/")


def test_unroot_gives_the_in_image_path_only_below_the_root() -> None:
    assert unroot("/img/etc/x", "/img") == "/etc/x"
    assert unroot("/image2/etc/x", "/img") == "/image2/etc/x"
    assert unroot("/etc/x", "") == "/etc/x"


def test_mount_types_last_mount_wins_and_spaces_are_decoded() -> None:
    text = "/\text4\n/mnt/onboard\tvfat\n/mnt/onboard\tfuse.fusefat\n/mnt/my\\040disk\texfat\nnoise\n"
    assert mount_types(text) == {"/": "ext4", "/mnt/onboard": "fuse.fusefat", "/mnt/my disk": "exfat"}
    assert {"vfat", "fuse.fusefat", "exfat"} <= NO_MODE_FS and "ext4" not in NO_MODE_FS
