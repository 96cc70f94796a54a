# Image and kernel bundles as Nix packages.
#
# A bundle (`NAME.tar.zst`, docs/image-catalog.md) is built from its recipe
# in images/ by `banger image build` / `banger kernel build`, inside a
# fixed-output derivation: it may reach the Debian mirror, and its result
# must hash to the sha256 recorded in images/catalog.toml. So a Nix build
# either yields byte-for-byte the bundle the catalog publishes (and a
# non-Nix `banger image build` produces), or fails with the hash it got.
# Entries not yet published (sha256 = "") use lib.fakeHash: the first build
# fails and prints the real hash, which is what publishing records.
#
# For the NixOS module, each bundle is also unpacked into the store
# (rootfs.ext4 / vmlinux, initrd, modules) so the daemon can register it in
# place. The unpacked files are the bundle's files byte for byte; only their
# timestamps and modes are normalized by the store.
{ lib, stdenvNoCC, runCommand, banger, mmdebstrap, e2fsprogs, zstd, gnutar
, cpio, kmod, busybox, dpkg, apt, cacert, util-linux, coreutils, xz }:
let
  catalog = builtins.fromTOML (builtins.readFile ../images/catalog.toml);

  entry = kind: name:
    lib.findFirst (e: e.name == name) { sha256 = ""; } (catalog.${kind} or [ ]);

  # busybox last: the initrd needs its binary, but its applets must not
  # shadow the real tools on PATH.
  buildTools = [ banger mmdebstrap e2fsprogs zstd gnutar cpio kmod dpkg apt util-linux coreutils xz busybox ];

  # The bundle file, built from its recipe.
  bundle = { kind, name }:
    let hash = (entry kind name).sha256;
    in stdenvNoCC.mkDerivation {
      name = "banger-${kind}-${name}.tar.zst";
      nativeBuildInputs = buildTools;
      outputHashMode = "flat";
      outputHashAlgo = "sha256";
      outputHash = if hash == "" then lib.fakeHash else hash;
      SSL_CERT_FILE = "${cacert}/etc/ssl/certs/ca-bundle.crt";
      buildCommand = ''
        export HOME=$TMPDIR
        banger ${kind} build ${lib.escapeShellArg name} --output "$out"
      '';
    };

  unpack = { kind, name, extra ? { } }:
    let file = bundle { inherit kind name; };
    in runCommand "banger-${kind}-${name}" {
      nativeBuildInputs = [ zstd gnutar ];
      passthru = {
        bundle = file;
        banger = { inherit kind name; } // extra;
      };
    } ''
      mkdir -p $out
      zstd -dc ${file} | tar -x -C $out
    '';

  kernel = unpack { kind = "kernel"; name = "generic-6.12"; };
  image = name: unpack { kind = "image"; inherit name; extra.kernel = kernel; };
in
{
  "generic-6.12" = kernel;
  debian-bookworm = image "debian-bookworm";
  # The minimal variant (no Docker, no mise) the tests boot.
  debian-bookworm-minimal = image "debian-bookworm-minimal";
}
