# The two system units, their directories and the install metadata, all
# from nix/units.json: the same data `banger system install` renders, so a
# NixOS host and a Debian host run identical [Service] sections (checked by
# crates/banger-deploy/tests/parity.rs).
{ config, lib, pkgs, ... }:
let
  cfg = config.services.banger;
  bl = import ./lib.nix { inherit lib; };
  inherit (bl.spec) layout;

  ownerUser = config.users.users.${cfg.owner};
  ownerGroup = ownerUser.group;

  vals = bl.placeholders {
    owner = cfg.owner;
    group = ownerGroup;
    home = ownerUser.home;
    binDir = "${cfg.package}/bin";
  };

  settingsFormat = pkgs.formats.toml { };
  configFile = settingsFormat.generate "banger-config.toml" cfg.settings;

  installToml = pkgs.writeText "banger-install.toml" (bl.installToml {
    owner_user = cfg.owner;
    owner_uid = ownerUser.uid;
    owner_gid = config.users.groups.${ownerGroup}.gid;
    socket_group = cfg.socketGroup;
    version = cfg.package.version;
    bin_dir = "${cfg.package}/bin";
    lib_dir = "${cfg.package}/lib/banger";
    inherit (layout) state_dir cache_dir run_dir root_run_dir config_path;
  });

  # Host tools banger runs (doctor's "host tools" list): on the units' PATH
  # and the owner's, so `banger doctor` sees what the daemon sees.
  runtimeTools = with pkgs; [ openssh e2fsprogs iproute2 nftables zstd gnutar util-linux ];

  mkService = name: unit: {
    path = runtimeTools;
    unitConfig = bl.substSection vals unit.Unit;
    serviceConfig = bl.substSection vals unit.Service;
    wantedBy = bl.wantedBy name unit;
    # Both processes read the config and the install metadata at start.
    restartTriggers = [ configFile installToml ];
  };
in
{
  config = lib.mkIf cfg.enable {
    systemd.services = lib.mapAttrs mkService bl.spec.units;

    # Brings /run/banger and /run/banger-root back after a reboot with the
    # owner and modes the helper's socket checks rely on.
    systemd.tmpfiles.rules = map (bl.subst vals) bl.spec.tmpfiles;

    environment.etc."banger/install.toml".source = installToml;
    environment.etc."banger/config.toml".source = configFile;

    environment.systemPackages = [ cfg.package ] ++ runtimeTools;

    services.banger.settings = {
      firecracker_bin = lib.mkIf (cfg.firecrackerPackage != null)
        (lib.mkDefault "${cfg.firecrackerPackage}/bin/firecracker");
      qemu_bin = lib.mkIf (cfg.qemuPackage != null)
        (lib.mkDefault "${cfg.qemuPackage}/bin/qemu-system-x86_64");
    };
  };
}
