# Helpers shared by the module's files: the hardening data from
# nix/units.json (the same file `banger system install` compiles in),
# placeholder substitution, and IPv4 CIDR validation.
{ lib }:
let
  inherit (lib) toList;
in
rec {
  spec = builtins.fromJSON (builtins.readFile ../units.json);

  # The placeholder values for an owner and a package, as
  # `banger system install` computes them from the passwd database.
  placeholders = { owner, group, home, binDir }: {
    "@owner@" = owner;
    "@group@" = group;
    "@home@" = home;
    "@bindir@" = binDir;
  };

  subst = vals: builtins.replaceStrings (builtins.attrNames vals) (builtins.attrValues vals);

  # A section of the data file with placeholders substituted; lists stay
  # lists, which NixOS renders as one `Key=value` line per element, the same
  # as the Rust renderer.
  substSection = vals: lib.mapAttrs (_: v: if builtins.isList v then map (subst vals) v else subst vals v);

  # [Install] only carries WantedBy; anything else would be silently lost
  # (NixOS has no generic installConfig), so refuse it here.
  wantedBy = name: unit:
    let extra = builtins.removeAttrs unit.Install [ "WantedBy" ];
    in if extra != { }
      then throw "nix/units.json: ${name}.Install supports only WantedBy, found ${toString (builtins.attrNames extra)}"
      else toList (unit.Install.WantedBy or [ ]);

  # /etc/banger/install.toml, the same keys `banger system install` writes
  # (banger_wire::install::InstallMetadata).
  installToml = meta:
    let
      q = s: builtins.toJSON s; # a JSON string is a valid TOML basic string
      line = k: v: "${k} = ${if builtins.isInt v then toString v else q v}\n";
      keys = [
        "owner_user" "owner_uid" "owner_gid" "version" "bin_dir" "lib_dir"
        "state_dir" "cache_dir" "run_dir" "root_run_dir" "config_path"
      ];
    in
    "# Written by the banger NixOS module; read by every banger process.\n"
    + lib.concatStrings (map (k: line k meta.${k}) keys)
    + lib.optionalString ((meta.socket_group or null) != null) (line "socket_group" meta.socket_group);

  # Parse "a.b.c.d/n"; null when malformed.
  parseCidr = s:
    let
      m = builtins.match "([0-9]{1,3})\\.([0-9]{1,3})\\.([0-9]{1,3})\\.([0-9]{1,3})/([0-9]{1,2})" s;
      nums = map lib.toInt m;
    in
    if m == null then null
    else { octets = lib.take 4 nums; prefix = lib.last nums; };

  # Why `s` is not a usable banger network, or null when it is. banger needs
  # room for the bridge and at least one guest, so the prefix is at most 30.
  cidrProblem = s:
    let
      c = parseCidr s;
      ip = builtins.foldl' (acc: o: acc * 256 + o) 0 c.octets;
      hostBits = 32 - c.prefix;
      pow2 = n: builtins.foldl' (acc: _: acc * 2) 1 (lib.range 1 n);
      hostPart = if hostBits == 0 then 0 else lib.mod ip (pow2 hostBits);
    in
    if c == null then "is not of the form a.b.c.d/prefix"
    else if lib.any (o: o > 255) c.octets then "has an octet above 255"
    else if c.prefix > 30 then "has a prefix longer than /30 (no room for the bridge and a guest)"
    else if hostPart != 0 then "has host bits set (use the network address)"
    else null;

  # Interface names the root helper accepts: ^[a-z0-9][a-z0-9-]{0,14}$ with
  # banger's prefix (crates/bangerd-root/src/validate.rs).
  bridgeNameValid = name: builtins.match "banger[a-z0-9-]{0,9}" name != null;
}
