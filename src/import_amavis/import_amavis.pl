# postsift import-amavis: evaluates an amavisd-new configuration the way amavisd reads it (Perl,
# file after file, in one namespace), but inside a Safe compartment: no system(), backticks,
# file writes, require/use of modules, network or exec. amavis's helper functions (new_RE,
# read_hash, dkim_key, ask_daemon, ...) and constants (D_PASS, CC_VIRUS, ...) are defined for it.
# Prints on stdout one JSON object: {"files": [...], "errors": [...], "notes": [...],
# "vars": {name: value}}. Regexps become {"re": source, "flags": flags}, code references
# {"code": name}, new_RE(...) {"new_RE": [rules]}, dkim_key(...) calls go to vars.dkim_keys.
# Usage: perl import_amavis.pl PATH   (a directory read in run-parts order, or one file)
use strict;
use warnings;
use Safe;
use JSON::PP;
use re qw(regexp_pattern);
use Scalar::Util qw(blessed refaddr);
use Sys::Hostname ();

my $path = shift @ARGV // '/etc/amavis/conf.d';
my (@files, @errors, @notes, @dkim_keys, %read_files);

if (-d $path) {
    # Debian's amavisd reads /usr/share/amavis/conf.d (the package's defaults) and then
    # /etc/amavis/conf.d; run-parts order and names (letters, digits, _ and -).
    my @dirs = ($path);
    my $pkg = $ENV{POSTSIFT_AMAVIS_SHARE} // '/usr/share/amavis/conf.d';
    unshift @dirs, $pkg if -d $pkg && $pkg ne $path && $path =~ m{(^|/)conf\.d/?$};
    for my $d (@dirs) {
        opendir(my $dh, $d) or die "cannot read $d: $!\n";
        push @files, map { "$d/$_" } sort grep { /^[A-Za-z0-9_-]+$/ && -f "$d/$_" } readdir $dh;
        closedir $dh;
    }
} elsif (-f $path) {
    @files = ($path);
} else {
    die "$path: no such file or directory\n";
}

my $c = Safe->new('Amavis::Conf');
my $root = $c->root;
no strict 'refs';

# Constants (Amavis::Conf).
my %const = (D_TEMPFAIL => -4, D_REJECT => -3, D_BOUNCE => -2, D_DISCARD => 0, D_PASS => 1,
    CC_CATCHALL => 0, CC_CLEAN => 1, CC_MTA => 2, CC_OVERSIZED => 3, CC_BADH => 4,
    CC_SPAMMY => 5, CC_SPAM => 6, CC_UNCHECKED => 7, CC_BANNED => 8, CC_VIRUS => 9);
for my $k (keys %const) { my $v = $const{$k}; *{"${root}::$k"} = sub () { $v }; }

# Helpers: they record what was asked rather than doing it.
my %helpers = (
    new_RE => sub { bless { new_RE => [@_] }, 'PostsiftImport::RE' },
    new_RE_list => sub { bless { new_RE => [@_] }, 'PostsiftImport::RE' },
    read_hash => sub { my ($h, @f) = @_; ref $h eq 'HASH' or ($h = {}, unshift @f, $_[0]);
        for my $f (@f) { $h->{lc $_} = 1 for read_lines($f) } $h },
    read_array => sub { my ($a, @f) = @_; ref $a eq 'ARRAY' or ($a = [], unshift @f, $_[0]);
        for my $f (@f) { push @$a, read_lines($f) } $a },
    read_text => sub { my ($f) = @_; join "\n", read_lines($f) },
    read_l10n_templates => sub { 1 },
    dkim_key => sub { my ($d, $s, $k, %o) = @_;
        push @dkim_keys, { domain => to_plain($d), selector => $s, key => to_plain($k),
            options => to_plain(\%o) }; 1 },
    include_config_files => sub { push @notes, "include_config_files(@_) not followed"; 1 },
    include_optional_config_files => sub { push @notes, "include_optional_config_files(@_) not followed"; 1 },
    ask_daemon => sub { 1 }, ask_av => sub { 1 }, ask_clamav => sub { 1 },
    sophos_savi => sub { 1 }, ask_daemon_fnc => sub { 1 },
    c => sub { undef }, cr => sub { undef }, ca => sub { [] },
);
for my $k (keys %helpers) { *{"${root}::$k"} = $helpers{$k}; }
my %helper_by_addr = map { (refaddr($helpers{$_}) => $_) } keys %helpers;

# Backticks and qx// would run a command: they compile to a call of the CORE::GLOBAL::readpipe
# override instead, which runs nothing and notes the command. The backtick op is permitted only
# for that, and a self-test below refuses to go on if the override were not in effect.
# Debian's 05-domain_id and 05-node_id ask `head -n 1 /etc/mailname` and `hostname --fqdn`:
# those two are answered by reading the file and the host name, without running them.
BEGIN {
    *CORE::GLOBAL::readpipe = sub {
        my ($cmd) = @_;
        $cmd = '' if !defined $cmd;
        if ($cmd =~ m{^\s*head -n ?1 (/[\w./-]+)\s*$} && open(my $fh, '<', $1)) {
            my $line = <$fh>;
            return defined $line ? $line : '';
        }
        if ($cmd =~ /^\s*hostname(?: --fqdn| -f)?\s*$/) {
            return Sys::Hostname::hostname() . "\n";
        }
        push @PostsiftImport::commands, $cmd;
        '';
    };
}

# amavis's built-in defaults for what the importer translates (Amavis::Conf), so a key the files
# leave alone reads as amavisd would have it.
my %scalar_defaults = (
    final_virus_destiny => 0, final_banned_destiny => 0, final_unchecked_destiny => 1,
    final_spam_destiny => 1, final_bad_header_destiny => 1,
    virus_quarantine_method => 'local:virus-%m', banned_files_quarantine_method => 'local:banned-%m',
    spam_quarantine_method => 'local:spam-%m.gz', bad_header_quarantine_method => 'local:badh-%m',
    virus_quarantine_to => 'virus-quarantine', banned_quarantine_to => 'banned-quarantine',
    spam_quarantine_to => 'spam-quarantine', bad_header_quarantine_to => 'bad-header-quarantine',
    inet_socket_port => undef, inet_socket_bind => '127.0.0.1', myproduct_name => 'amavisd-new',
    sa_tag_level_deflt => undef, sa_tag2_level_deflt => 6.31, sa_kill_level_deflt => 6.31,
    sa_spam_subject_tag => undef, mydomain => undef, myhostname => undef,
);
for my $k (keys %scalar_defaults) { ${"${root}::$k"} = $scalar_defaults{$k}; }
@{"${root}::mynetworks"} = qw(127.0.0.0/8 [::1] 169.254.0.0/16 [fe80::]/10);
@{"${root}::bypass_virus_checks_maps"} = ();
@{"${root}::bypass_spam_checks_maps"} = ();
@{"${root}::bypass_banned_checks_maps"} = ();
@{"${root}::bypass_header_checks_maps"} = ();

# Ops a configuration needs beyond Safe's default (:default): none that reach outside. sort is
# in :default; `print`/`warn` go to stderr harmlessly.
# chdir appears in @av_scanners' callbacks (compiled, never called here).
$c->permit_only(':default', 'print', 'sort', 'warn', 'time', 'localtime', 'gmtime', 'chdir', 'backtick');

my $probe = $c->reval('`exit 3`; "probe"');
if (!defined $probe || $probe ne 'probe' || @PostsiftImport::commands != 1) {
    die "import-amavis: the sandbox cannot keep commands in backticks from running; not reading the configuration\n";
}
@PostsiftImport::commands = ();

for my $f (@files) {
    open(my $fh, '<', $f) or do { push @errors, "$f: $!"; next };
    local $/;
    my $code = <$fh>;
    close $fh;
    # `use strict;` is a compile-time require, which the compartment forbids; amavis declares
    # its variables, so without strict the same code means the same thing.
    $code =~ s/^\s*use\s+(strict|warnings)\b[^;]*;//mg;
    my $ok = $c->reval("#line 1 \"$f\"\n$code", 0);
    if ($@) {
        my $e = $@; chomp $e;
        push @errors, "$f: $e";
    }
}

sub read_lines {
    my ($f) = @_;
    my @l;
    open(my $fh, '<', $f) or do { push @notes, "read_hash/read_array: cannot read $f: $!"; return () };
    while (<$fh>) {
        chomp; s/#.*//; s/^\s+|\s+$//g;
        push @l, $_ if length;
    }
    @l;
}

# Plain data for JSON.
sub to_plain {
    my ($v, $depth) = @_;
    $depth //= 0;
    return undef if !defined $v;
    return '<too deep>' if $depth > 20;
    my $r = ref $v;
    return $v if !$r;
    if ($r eq 'Regexp' || (blessed($v) && re::is_regexp($v))) {
        my ($pat, $mods) = regexp_pattern($v);
        return { re => $pat, flags => $mods };
    }
    if ($r eq 'PostsiftImport::RE') {
        return { new_RE => [map { to_plain($_, $depth + 1) } @{$v->{new_RE}}] };
    }
    if ($r eq 'CODE') {
        my $name = $helper_by_addr{refaddr $v};
        return { code => $name // 'sub { ... }' };
    }
    if ($r eq 'ARRAY') { return [map { to_plain($_, $depth + 1) } @$v] }
    if ($r eq 'HASH') { return { map { ($_ => to_plain($v->{$_}, $depth + 1)) } keys %$v } }
    if ($r eq 'SCALAR' || $r eq 'REF') { return { ref => to_plain($$v, $depth + 1) } }
    return "<$r>";
}

my %vars;
my %skip = map { $_ => 1 } qw(ENV INC SIG ARGV ARGVOUT STDIN STDOUT STDERR _ 0 1 2 3 a b);
for my $name (keys %{"${root}::"}) {
    next if $skip{$name} || $name =~ /::$/ || $name =~ /^[^A-Za-z]/ || exists $helpers{$name} || exists $const{$name};
    my $glob = \*{"${root}::$name"};
    if (defined ${*$glob{SCALAR}}) { $vars{"\$$name"} = to_plain(${*$glob{SCALAR}}); }
    if (defined *$glob{ARRAY} && @{*$glob{ARRAY}}) { $vars{"\@$name"} = to_plain(*$glob{ARRAY}); }
    if (defined *$glob{HASH} && %{*$glob{HASH}}) { $vars{"%$name"} = to_plain(*$glob{HASH}); }
}
$vars{dkim_keys} = \@dkim_keys;
push @notes, map { "command in backticks not run (sandbox): $_" } @PostsiftImport::commands;

print JSON::PP->new->canonical->allow_nonref->encode(
    { files => \@files, errors => \@errors, notes => \@notes, vars => \%vars }), "\n";
