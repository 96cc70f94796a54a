# Image and kernel bundles as Nix packages (docs/nixos.md, "Bundles").
#
# Default: the bundle the catalog publishes (images/catalog.toml: base_url,
# url, sha256), fetched and checked by hash, so the bytes are exactly those
# of the non-Nix build that produced the catalog entry. Entries that are not
# published yet (no entry, or sha256 = "") evaluate to a derivation that
# fails with instructions, so `nix flake check` still evaluates.
#
# `passthru.fromRecipe`: the same bundle built from its recipe in images/
# by `banger KIND build NAME --output FILE` in a fixed-output derivation
# whose hash is the catalog's. See docs/nixos.md for why it does not build
# in a default Nix sandbox yet and where its bytes would differ.
#
# Each package is the bundle unpacked (rootfs.ext4 / vmlinux, initrd,
# modules, manifest.json) so the NixOS module can register it in place;
# `passthru.bundle` is the .tar.zst itself.
{ lib, stdenvNoCC, runCommand, fetchurl, banger, mmdebstrap, e2fsprogs, zstd
, gnutar, cpio, kmod, busybox, dpkg, apt, cacert, util-linux, coreutils, xz
, catalogFile ? ../images/catalog.toml }:
let
  catalog = builtins.fromTOML (builtins.readFile catalogFile);

  entry = kind: name:
    lib.findFirst (e: e.name == name && (e.sha256 or "") != "") null (catalog.${kind} or [ ]);

  unpublished = kind: name: runCommand "banger-${kind}-${name}-unpublished.tar.zst" { } ''
    echo "banger: the ${kind} bundle ${name} is not published in images/catalog.toml yet." >&2
    echo "Build it on a Debian host with 'sudo banger ${kind} build ${name}', or publish it" >&2
    echo "(docs/image-catalog.md) so its sha256 is recorded." >&2
    exit 1
  '';

  fetched = kind: name:
    let e = entry kind name;
    in if e == null then unpublished kind name
      else fetchurl {
        name = "banger-${kind}-${name}.tar.zst";
        url = "${catalog.base_url}/${e.url}";
        sha256 = e.sha256;
      };

  # busybox last: the initrd needs its binary, but its applets must not
  # shadow the real tools on PATH.
  buildTools = [ banger mmdebstrap e2fsprogs zstd gnutar cpio kmod dpkg apt util-linux coreutils xz busybox ];

  fromRecipe = kind: name:
    let e = entry kind name;
    in stdenvNoCC.mkDerivation {
      name = "banger-${kind}-${name}-from-recipe.tar.zst";
      nativeBuildInputs = buildTools;
      outputHashMode = "flat";
      outputHashAlgo = "sha256";
      outputHash = if e == null then lib.fakeHash else e.sha256;
      SSL_CERT_FILE = "${cacert}/etc/ssl/certs/ca-bundle.crt";
      buildCommand = ''
        export HOME=$TMPDIR
        banger ${kind} build ${lib.escapeShellArg name} --output "$out"
      '';
    };

  unpack = { kind, name, extra ? { } }:
    let file = fetched kind name;
    in runCommand "banger-${kind}-${name}" {
      nativeBuildInputs = [ zstd gnutar ];
      passthru = {
        bundle = file;
        fromRecipe = fromRecipe kind name;
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
