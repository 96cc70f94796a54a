# Evaluates banger's NixOS module with nixpkgs' lib and stub options, in the
# cases crates/banger-deploy/tests/parity.rs checks. Run:
#   nix-instantiate --store dummy:// --eval --strict --json tests/nixos/parity/eval.nix \
#     --arg nixpkgsLib ../shared/nixpkgs-lib/lib --argstr version 0.1.0
{ nixpkgsLib, version }:
let
  lib = import nixpkgsLib;
  pkgs = import ./pkgs.nix { inherit lib version; };

  eval = config: (lib.evalModules {
    modules = [
      ./stubs.nix
      ../../../nix/module
      { _module.args.pkgs = pkgs; }
      {
        users.users.alice = { isNormalUser = true; uid = 1500; group = "devs"; };
        users.groups.devs.gid = 1600;
        users.users.mallory = { isNormalUser = true; uid = 1501; };
        users.groups.users.gid = 100;
        services.banger.package = pkgs.banger;
      }
      config
    ];
  }).config;

  failed = cfg: map (a: a.message) (builtins.filter (a: !a.assertion) cfg.assertions);

  # The units of nix/units.json; the module's own helper units
  # (banger-home, banger-images) are checked on their own.
  specUnits = builtins.attrNames (builtins.fromJSON (builtins.readFile ../../../nix/units.json)).units;
  bangerUnits = cfg: lib.mapAttrs
    (_: s: { inherit (s) unitConfig serviceConfig wantedBy; })
    (lib.filterAttrs (n: _: builtins.elem n specUnits) cfg.systemd.services);

  summary = cfg: {
    failedAssertions = failed cfg;
    units = bangerUnits cfg;
    tmpfiles = cfg.systemd.tmpfiles.rules;
    etc = builtins.attrNames cfg.environment.etc;
    installToml = builtins.fromTOML cfg.environment.etc."banger/install.toml".source.text;
    settings = cfg.environment.etc."banger/config.toml".source.value;
    systemPackages = map (p: p.name) cfg.environment.systemPackages;
    home = { inherit (cfg.systemd.services.banger-home) script serviceConfig before wantedBy; };
  };

  fakeKernel = {
    type = "derivation"; name = "generic-6.12"; outPath = "/nix/store/k-generic-6.12";
    banger = { kind = "kernel"; name = "generic-6.12"; };
  };
  fakeImage = {
    type = "derivation"; name = "debian-bookworm"; outPath = "/nix/store/i-debian-bookworm";
    banger = { kind = "image"; name = "debian-bookworm"; kernel = fakeKernel; };
  };
in
{
  good = summary (eval { services.banger = { enable = true; owner = "alice"; }; });

  custom = summary (eval {
    services.banger = {
      enable = true;
      owner = "alice";
      network = { bridge = "banger-lab"; cidr = "10.203.0.0/24"; };
      firecrackerPackage = null;
      settings = { vmm = "qemu"; cidr = "10.9.0.0/24"; };
      dns.enable = true;
    };
  }) // { resolved = (eval { services.banger = { enable = true; owner = "alice"; dns.enable = true; }; }).services.resolved.enable; };

  images =
    let cfg = eval { services.banger = { enable = true; owner = "alice"; images = [ fakeImage ]; }; };
    in { inherit (cfg.systemd.services.banger-images) script serviceConfig; failedAssertions = failed cfg; };

  disabled =
    let cfg = eval { services.banger.owner = "alice"; };
    in {
      units = builtins.attrNames cfg.systemd.services;
      tmpfiles = cfg.systemd.tmpfiles.rules;
      etc = builtins.attrNames cfg.environment.etc;
      failedAssertions = failed cfg;
    };

  badCidr = failed (eval { services.banger = { enable = true; owner = "alice"; network.cidr = "172.16.0.300/24"; }; });
  hostBitsCidr = failed (eval { services.banger = { enable = true; owner = "alice"; network.cidr = "172.16.0.1/24"; }; });
  badBridge = failed (eval { services.banger = { enable = true; owner = "alice"; network.bridge = "br0"; }; });
  missingOwner = failed (eval { services.banger = { enable = true; owner = "bob"; }; });
  rootOwner = failed (eval { services.banger = { enable = true; owner = "root"; }; users.users.root.uid = 0; });
  noUid = failed (eval { services.banger = { enable = true; owner = "carol"; }; users.users.carol.isNormalUser = true; });
  dnsWithoutResolved = failed (eval { services.banger = { enable = true; owner = "alice"; dns.enable = true; }; services.resolved.enable = false; });
  unknownSocketGroup = failed (eval { services.banger = { enable = true; owner = "alice"; socketGroup = "nope"; }; });
  socketGroup =
    let cfg = eval { services.banger = { enable = true; owner = "alice"; socketGroup = "banger"; }; users.groups.banger = { }; };
    in { failedAssertions = failed cfg; installToml = builtins.fromTOML cfg.environment.etc."banger/install.toml".source.text; };
  foreignImage = failed (eval { services.banger = { enable = true; owner = "alice"; images = [ { type = "derivation"; name = "hello"; outPath = "/nix/store/h"; } ]; }; });
}
