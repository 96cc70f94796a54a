# `.vm` names on the host: the daemon serves the zone on the bridge address
# and the root helper routes `~vm` to it through systemd-resolved's per-link
# DNS, so resolved must run.
{ config, lib, ... }:
let
  cfg = config.services.banger;
in
{
  config = lib.mkIf (cfg.enable && cfg.dns.enable) {
    services.resolved.enable = lib.mkDefault true;
  };
}
