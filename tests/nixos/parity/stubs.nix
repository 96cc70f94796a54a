# Minimal declarations of the NixOS options banger's module sets, so the
# module can be evaluated with nixpkgs' `lib` alone (no full nixpkgs here).
# Types are loose on purpose: the parity test compares the values the
# module defines, not NixOS's rendering of them.
{ lib, ... }:
let
  inherit (lib) mkOption types;
  anything = mkOption { type = types.anything; default = null; };
in
{
  options = {
    assertions = mkOption {
      type = types.listOf (types.submodule {
        options.assertion = mkOption { type = types.bool; };
        options.message = mkOption { type = types.str; };
      });
      default = [ ];
    };

    users.users = mkOption {
      default = { };
      type = types.attrsOf (types.submodule ({ name, config, ... }: {
        options = {
          uid = mkOption { type = types.nullOr types.int; default = null; };
          isNormalUser = mkOption { type = types.bool; default = false; };
          group = mkOption { type = types.str; default = ""; };
          home = mkOption { type = types.str; default = "/var/empty"; };
        };
        # As NixOS does for normal users.
        config = lib.mkIf config.isNormalUser {
          group = lib.mkDefault "users";
          home = lib.mkDefault "/home/${name}";
        };
      }));
    };
    users.groups = mkOption {
      default = { };
      type = types.attrsOf (types.submodule {
        options.gid = mkOption { type = types.nullOr types.int; default = null; };
      });
    };

    systemd.services = mkOption {
      default = { };
      type = types.attrsOf (types.submodule {
        options = {
          description = mkOption { type = types.str; default = ""; };
          unitConfig = mkOption { type = types.attrsOf types.anything; default = { }; };
          serviceConfig = mkOption { type = types.attrsOf types.anything; default = { }; };
          wantedBy = mkOption { type = types.listOf types.str; default = [ ]; };
          after = mkOption { type = types.listOf types.str; default = [ ]; };
          before = mkOption { type = types.listOf types.str; default = [ ]; };
          requires = mkOption { type = types.listOf types.str; default = [ ]; };
          restartTriggers = mkOption { type = types.listOf types.anything; default = [ ]; };
          script = mkOption { type = types.lines; default = ""; };
          path = mkOption { type = types.listOf types.anything; default = [ ]; };
        };
      });
    };
    systemd.tmpfiles.rules = mkOption { type = types.listOf types.str; default = [ ]; };

    environment.etc = mkOption {
      default = { };
      type = types.attrsOf (types.submodule {
        options.text = mkOption { type = types.nullOr types.lines; default = null; };
        options.source = anything;
      });
    };
    environment.systemPackages = mkOption { type = types.listOf types.anything; default = [ ]; };

    networking.networkmanager.enable = mkOption { type = types.bool; default = false; };
    networking.networkmanager.unmanaged = mkOption { type = types.listOf types.str; default = [ ]; };
    services.resolved.enable = mkOption { type = types.bool; default = false; };
  };
}
