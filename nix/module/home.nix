# banger's directories in the owner's home (`home_dirs` of nix/units.json:
# the ssh_config's and the default SSH key's). bangerd may write only these
# under the home (its ReadWritePaths) and cannot create them itself, so this
# oneshot makes them before it starts, as the owner -- the counterpart of
# `banger system install` doing it in a child running with the owner's uid.
# A symlink on the way is refused, as the installer refuses it.
{ config, lib, ... }:
let
  cfg = config.services.banger;
  bl = import ./lib.nix { inherit lib; };
  home = config.users.users.${cfg.owner}.home;

  # One directory: each component must be a real directory (created 0755
  # when missing), the last one ends up 0700.
  ensure = rel: ''
    p=${lib.escapeShellArg home}
    for c in ${lib.escapeShellArgs (lib.splitString "/" rel)}; do
      p="$p/$c"
      if [ -L "$p" ]; then
        echo "refusing $p: it is a symlink; replace it with a directory" >&2
        exit 1
      fi
      [ -d "$p" ] || mkdir -m 0755 "$p"
    done
    chmod 0700 "$p"
  '';
in
{
  config = lib.mkIf cfg.enable {
    systemd.services.banger-home = {
      description = "banger's directories in the owner's home";
      before = [ "bangerd.service" ];
      wantedBy = [ "bangerd.service" ];
      script = lib.concatMapStrings ensure bl.spec.home_dirs;
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
        User = cfg.owner;
        UMask = "0022";
        NoNewPrivileges = true;
        CapabilityBoundingSet = "";
        PrivateNetwork = true;
      };
    };
  };
}
