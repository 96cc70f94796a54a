# NixOS VM tests of banger's module (flake `checks`). They need a Nix host
# with nixpkgs and KVM (or patience: the test VMs boot under TCG too); this
# repository's own CI only parses them (docs/nixos.md).
{ pkgs, self }:
let
  common = import ./common.nix { inherit self; };
  run = file: pkgs.testers.runNixOSTest (import file { inherit pkgs self common; });
in
{
  units = run ./units.nix;
  vm-run = run ./vm-run.nix;
  helper-peer = run ./helper-peer.nix;
  uninstall = run ./uninstall.nix;
}
