# Configuration errors, each saying what is wrong and how to fix it.
{ config, lib, ... }:
let
  cfg = config.services.banger;
  bl = import ./lib.nix { inherit lib; };
  user = config.users.users.${cfg.owner} or null;
  group = if user == null then null else config.users.groups.${user.group} or null;
  cidrProblem = bl.cidrProblem cfg.network.cidr;
  imagesWithoutMeta = builtins.filter (p: !(p ? banger)) cfg.images;
in
{
  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = user != null;
        message = ''
          services.banger.owner = "${cfg.owner}", but users.users has no such user.
          The banger daemon runs as this user; declare it, for example:
            users.users.${cfg.owner} = { isNormalUser = true; uid = 1000; };'';
      }
      {
        assertion = cfg.owner != "root" && (user == null || user.uid != 0);
        message = ''
          services.banger.owner must be an unprivileged user, not "${cfg.owner}":
          only the root helper runs as root, with a minimal capability set.'';
      }
      {
        assertion = user == null || user.uid != null;
        message = ''
          users.users.${cfg.owner}.uid must be set to a fixed number: banger writes the
          owner's uid into /etc/banger/install.toml at build time, and the root helper
          serves only that uid. For example: users.users.${cfg.owner}.uid = 1000;'';
      }
      {
        assertion = user == null || cfg.owner == "root" || (group != null && group.gid != null);
        message = ''
          The primary group of services.banger.owner ("${if user == null then "" else user.group}")
          must be declared in users.groups with a fixed gid: banger's runtime and state
          directories are group-owned by it. For example:
            users.groups.${if user == null then "GROUP" else user.group}.gid = 1000;'';
      }
      {
        assertion = cfg.socketGroup == null || config.users.groups ? ${cfg.socketGroup};
        message = ''
          services.banger.socketGroup = "${toString cfg.socketGroup}", but users.groups has no
          such group. Declare it (users.groups.${toString cfg.socketGroup} = { };) and add the
          users who may drive the daemon, or leave socketGroup null: then only the owner
          and root may connect.'';
      }
      {
        assertion = cidrProblem == null;
        message = ''
          services.banger.network.cidr = "${cfg.network.cidr}" ${toString cidrProblem}.
          Use an IPv4 network such as "172.16.0.0/24" that no existing route covers.'';
      }
      {
        assertion = bl.bridgeNameValid cfg.network.bridge;
        message = ''
          services.banger.network.bridge = "${cfg.network.bridge}" is not an interface name
          the root helper accepts: it must start with "banger" and have at most 15
          characters of a-z, 0-9 and "-" (for example "banger0").'';
      }
      {
        assertion = !cfg.dns.enable || config.services.resolved.enable;
        message = ''
          services.banger.dns.enable routes *.vm through systemd-resolved, but
          services.resolved.enable is false. Enable resolved, or set
          services.banger.dns.enable = false and see docs/dns-routing.md.'';
      }
      {
        assertion = imagesWithoutMeta == [ ];
        message = ''
          services.banger.images must hold image bundles built by banger's flake
          (packages.<system>.debian-bookworm and friends); these are not:
          ${lib.concatMapStringsSep ", " (p: p.name or "<unnamed>") imagesWithoutMeta}'';
      }
    ];
  };
}
