# nix/bundles.nix with stub builders, against the real catalog and a
# catalog with published entries (crates/banger-deploy/tests/parity.rs).
{ nixpkgsLib, publishedCatalog }:
let
  lib = import nixpkgsLib;
  drv = a: { type = "derivation"; } // a;
  stubs = {
    inherit lib;
    stdenvNoCC.mkDerivation = a: drv { inherit (a) name outputHash buildCommand; };
    runCommand = name: env: script: drv ({ inherit name script; } // (env.passthru or { }));
    fetchurl = a: drv a;
    cacert = "/nix/store/cacert";
  } // lib.genAttrs [
    "banger" "mmdebstrap" "e2fsprogs" "zstd" "gnutar" "cpio" "kmod" "busybox"
    "dpkg" "apt" "util-linux" "coreutils" "xz"
  ] (name: drv { inherit name; });
  summary = bundles: lib.mapAttrs (_: p: {
    inherit (p) name;
    bundle = { inherit (p.bundle) name; url = p.bundle.url or null; sha256 = p.bundle.sha256 or null; script = p.bundle.script or null; };
    recipe = { inherit (p.fromRecipe) outputHash buildCommand; };
    meta = p.banger // { kernel = p.banger.kernel.banger.name or null; };
  }) bundles;
in
{
  real = summary (import ../../../nix/bundles.nix stubs);
  published = summary (import ../../../nix/bundles.nix (stubs // { catalogFile = publishedCatalog; }));
}
