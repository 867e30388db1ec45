#!/usr/bin/env perl
# Echo handler for tgate, with no adapter: written from docs/protocol.md alone,
# core Perl only. Every byte a client sends comes back to it.
#
# Give tgate `perl examples/echo.pl` (or just `examples/echo.pl`) as its handler.
#
# Client bytes travel as JSON strings whose code points U+0000..U+00FF are the
# bytes 0x00..0xFF. JSON::PP in utf8 mode decodes the UTF-8 JSON line into
# exactly those characters and encodes them back the same way, so the echo is
# byte-exact, escapes (\u0000, \", \\) and 0x80..0xFF included.
use strict;
use warnings;
use JSON::PP ();

my $json = JSON::PP->new->utf8;
binmode STDIN;
binmode STDOUT;
$| = 1;    # every reply goes out at once

while (my $line = <STDIN>) {
    my $msg = eval { $json->decode($line) };
    if (ref $msg ne 'HASH') {
        print STDERR "echo.pl: ignoring a line that is not a JSON object: $line";
        next;
    }
    my $op = $msg->{op} // '';
    # tgate --framing line|crlf|packet2|...: a frame goes back as one frame, and
    # a client's half-close (eof) is answered by closing it.
    if ($op eq 'frame') {
        print $json->encode({ op => 'write', id => 0 + $msg->{id}, data => $msg->{data} // '' }), "\n";
        next;
    }
    if ($op eq 'eof') {
        print $json->encode({ op => 'close', id => 0 + $msg->{id} }), "\n";
        next;
    }
    next unless $op eq 'data';    # ignore every other op, known or not
    my $id   = 0 + $msg->{id};
    my $data = $msg->{data} // '';
    my $n    = length $data;    # code points = bytes
    my @out;
    push @out, { op => 'write', id => $id, data => $data } if $n;
    # The write and its consumed in one line: applied together or not at all.
    push @out, { op => 'consumed', id => $id, n => $n };
    print $json->encode(\@out), "\n";
}
exit 0;    # stdin EOF: tgate is stopping or replacing us
