# banger's NixOS module: options in ./options.nix, one file per feature.
# The flake exposes it as nixosModules.default / nixosModules.banger (which
# also sets services.banger.package to the flake's package).
{
  imports = [
    ./options.nix
    ./units.nix
    ./network.nix
    ./dns.nix
    ./images.nix
    ./home.nix
    ./assertions.nix
  ];
}
