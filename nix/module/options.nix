# Every option of services.banger, with types, defaults and descriptions.
{ lib, pkgs, ... }:
let
  inherit (lib) mkOption mkEnableOption types literalExpression;
  settingsFormat = pkgs.formats.toml { };
in
{
  options.services.banger = {
    enable = mkEnableOption ''
      banger, one-command development sandboxes on microVMs. This runs two
      system units built from the same hardening data as
      `banger system install`: `bangerd` (the daemon, as {option}`services.banger.owner`)
      and `bangerd-root` (the root helper, with only the capabilities it needs)
    '';

    owner = mkOption {
      type = types.str;
      example = "alice";
      description = ''
        The user the daemon runs as and the only user the root helper serves.
        It must be declared in {option}`users.users` with a fixed `uid`
        (written to {file}`/etc/banger/install.toml`). Daily commands such as
        `banger vm run` work for this user without sudo.
      '';
    };

    socketGroup = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "banger";
      description = ''
        A group whose members may also use the daemon's API socket
        (`socket_group` in {file}`/etc/banger/install.toml`; the socket is
        then mode 0660 with this group). By default only the owner and root
        may connect, whatever the socket's mode: bangerd checks every
        connection's peer credentials. Never use the owner's primary group
        here when that is `users`: every normal user is in it.
      '';
    };

    package = mkOption {
      type = types.package;
      defaultText = literalExpression "banger.packages.\${pkgs.stdenv.hostPlatform.system}.banger";
      description = ''
        The banger package: `bin/banger`, `bin/bangerd`, `bin/bangerd-root`,
        `bin/bangerd-build` (the image builder the helper runs)
        and the guest agent under `lib/banger/`. The flake's
        `nixosModules.default` sets it to the flake's own package.
      '';
    };

    settings = mkOption {
      type = types.submodule { freeformType = settingsFormat.type; };
      default = { };
      example = literalExpression ''
        {
          vmm = "qemu";
          default_image_name = "debian-bookworm";
          vm_defaults = { vcpu = 2; memory_mib = 2048; };
        }
      '';
      description = ''
        banger's configuration, rendered to {file}`/etc/banger/config.toml`.
        Every key of `docs/config.md` is accepted; unknown keys are rejected
        by banger when it starts. `bridge_name`, `cidr`, `firecracker_bin` and
        `qemu_bin` default to the values of the network and package options.
      '';
    };

    firecrackerPackage = mkOption {
      type = types.nullOr types.package;
      default = pkgs.firecracker;
      defaultText = literalExpression "pkgs.firecracker";
      description = ''
        Firecracker, banger's default VMM. `null` leaves `firecracker_bin`
        unset (banger then uses QEMU, or whatever `settings` says).
      '';
    };

    qemuPackage = mkOption {
      type = types.nullOr types.package;
      default = pkgs.qemu_kvm;
      defaultText = literalExpression "pkgs.qemu_kvm";
      description = ''
        QEMU, the second backend (`microvm` machine; KVM where it works,
        TCG where it does not). `null` leaves `qemu_bin` unset.
      '';
    };

    images = mkOption {
      type = types.listOf types.package;
      default = [ ];
      example = literalExpression "[ banger.packages.x86_64-linux.debian-bookworm ]";
      description = ''
        Image bundles to register at boot, so the first `banger vm run` needs
        no download. Each is an unpacked image bundle from this flake
        (`packages.<system>.debian-bookworm`, `debian-bookworm-minimal`),
        which carries its kernel bundle in `passthru.banger.kernel`. They are
        registered in place from the Nix store (VM disks are copy-on-write
        clones, so the read-only store copy is never written).
      '';
    };

    network = {
      bridge = mkOption {
        type = types.str;
        default = "banger0";
        description = ''
          Name of the bridge the root helper creates for the guests (the
          `bridge_name` setting). It must start with `banger`: the root helper
          only touches interfaces with that prefix.
        '';
      };
      cidr = mkOption {
        type = types.str;
        default = "172.16.0.0/24";
        example = "10.203.0.0/24";
        description = ''
          IPv4 network of the guests (the `cidr` setting). The bridge gets
          its first address unless `settings.bridge_ip` says otherwise. Pick
          a range no existing route uses; `banger doctor` reports overlaps.
        '';
      };
    };

    dns.enable = mkEnableOption ''
      resolving `NAME.vm` on the host through systemd-resolved: the root
      helper points the banger bridge's per-link DNS at the daemon's `.vm`
      zone with a `~vm` routing domain. This turns on
      {option}`services.resolved.enable` (by default priority)
    '';
  };
}
