# The flake's NixOS checks (tests/nixos/default.nix) with stub `pkgs` and
# `self`, so CI, which cannot run them without nixpkgs, can at least check
# that every test evaluates and its Python script compiles
# (crates/banger-deploy/tests/parity.rs).
let
  fake = name: { type = "derivation"; inherit name; outPath = "/nix/store/${name}"; };
  pkgs = {
    system = "x86_64-linux";
    socat = fake "socat";
    writeShellScript = name: _text: "/nix/store/${name}";
    # The real one builds and runs the VMs; here the test's attributes are
    # returned as they are.
    testers.runNixOSTest = test: test;
  };
  self = {
    nixosModules.default = { };
    packages.x86_64-linux.debian-bookworm-minimal = fake "debian-bookworm-minimal";
  };
in
builtins.mapAttrs (_: t: { inherit (t) name testScript; }) (import ../default.nix { inherit pkgs self; })
