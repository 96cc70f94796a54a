# The few nixpkgs attributes banger's module reads, as plain attribute sets
# that pass `types.package` (type = "derivation"). The banger package's
# outPath is /usr/local, so its bin/ and lib/banger/ are exactly where
# `banger system install` puts the binaries: the parity test can then compare
# units and install.toml byte for byte.
{ lib, version }:
let
  fakeDrv = name: outPath: extra: {
    type = "derivation";
    inherit name outPath;
  } // extra;
in
{
  banger = fakeDrv "banger-${version}" "/usr/local" { inherit version; };
  firecracker = fakeDrv "firecracker" "/nix/store/00000000000000000000000000000000-firecracker" { };
  qemu_kvm = fakeDrv "qemu" "/nix/store/00000000000000000000000000000000-qemu" { };

  openssh = fakeDrv "openssh" "/nix/store/openssh" { };
  e2fsprogs = fakeDrv "e2fsprogs" "/nix/store/e2fsprogs" { };
  iproute2 = fakeDrv "iproute2" "/nix/store/iproute2" { };
  nftables = fakeDrv "nftables" "/nix/store/nftables" { };
  zstd = fakeDrv "zstd" "/nix/store/zstd" { };
  gnutar = fakeDrv "gnutar" "/nix/store/gnutar" { };
  util-linux = fakeDrv "util-linux" "/nix/store/util-linux" { };

  # Keeps the text readable for the test instead of writing a store file.
  writeText = name: text: { inherit name text; };

  # The real pkgs.formats.toml renders a file; here the settings are kept as
  # data so the test can read them back.
  formats.toml = { }: {
    type = lib.types.attrsOf lib.types.anything;
    generate = name: value: { inherit name value; };
  };
}
