# Preinstalled images: each bundle in services.banger.images is registered
# with the daemon at boot, in place from the Nix store, by a oneshot unit
# running as the owner (so it needs nothing the owner could not do by hand).
{ config, lib, pkgs, ... }:
let
  cfg = config.services.banger;
  banger = "${cfg.package}/bin/banger";

  # `banger image register` with the kernel given by paths (docs/image-catalog.md);
  # skipped when an image of that name is already known, so a reboot or a
  # rebuild is a no-op.
  register = image:
    let
      meta = image.banger;
      k = meta.kernel;
    in
    ''
      if ! ${banger} image show ${lib.escapeShellArg meta.name} >/dev/null 2>&1; then
        ${banger} image register --name ${lib.escapeShellArg meta.name} \
          --rootfs ${image}/rootfs.ext4 \
          --kernel ${k}/vmlinux \
          --initrd ${k}/initrd \
          --modules ${k}/modules
      fi
    '';
in
{
  config = lib.mkIf (cfg.enable && cfg.images != [ ]) {
    systemd.services.banger-images = {
      description = "Register banger's preinstalled images";
      after = [ "bangerd.service" ];
      requires = [ "bangerd.service" ];
      wantedBy = [ "multi-user.target" ];
      script = lib.concatMapStrings register cfg.images;
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
        User = cfg.owner;
        NoNewPrivileges = true;
        ProtectSystem = "strict";
        ProtectHome = "read-only";
        PrivateTmp = true;
        PrivateDevices = true;
        RestrictAddressFamilies = [ "AF_UNIX" ];
        CapabilityBoundingSet = "";
        SystemCallFilter = "@system-service";
      };
    };
  };
}
