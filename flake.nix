{
  description = "banger: one-command development sandboxes on Firecracker and QEMU microVMs";

  # `nix flake lock` on a Nix host pins this in flake.lock (this repository's
  # CI has no access to nixpkgs; see docs/nixos.md).
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.05";

  outputs = { self, nixpkgs }:
    let
      system = "x86_64-linux";
      pkgs = nixpkgs.legacyPackages.${system};
      banger = pkgs.callPackage ./nix/package.nix { };
      bundles = pkgs.callPackage ./nix/bundles.nix { inherit banger; };
    in
    {
      packages.${system} = bundles // {
        inherit banger;
        default = banger;
      };

      apps.${system} = rec {
        banger = {
          type = "app";
          program = "${self.packages.${system}.banger}/bin/banger";
        };
        default = banger;
      };

      devShells.${system}.default = pkgs.mkShell {
        inputsFrom = [ banger ];
        packages = with pkgs; [
          cargo rustc rustfmt clippy rust-analyzer
          # What the test suite and the main job run.
          qemu_kvm nftables iproute2 openssh zstd xz cpio kmod e2fsprogs
          mmdebstrap busybox dnsutils curl git nix systemd
        ];
      };

      nixosModules = {
        banger = { lib, pkgs, ... }: {
          imports = [ ./nix/module ];
          services.banger.package =
            lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.banger;
        };
        default = self.nixosModules.banger;
      };

      checks.${system} = import ./tests/nixos { inherit pkgs self; };
    };
}
