# Copyright (c) 2026, the asyncjobs authors
#
# A job belongs to the transaction that enqueues it: a rolled-back enqueue
# (ROLLBACK, ROLLBACK TO SAVEPOINT, an error) leaves no job and nothing
# runs; an enqueue in a transaction that is still open runs only after it
# commits.

use strict;
use warnings;

# test/perl is found without prove -I (PGXS drops a PROVE_FLAGS set before
# it is included)
use FindBin;
use lib "$FindBin::RealBin/../perl";

use AsyncJobsNode;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my $node = AsyncJobsNode->new_node('rollback', max_workers => 2);

$node->safe_psql('postgres', 'CREATE TABLE effects (k text PRIMARY KEY)');

sub enqueue_effect_sql
{
	my ($k) = @_;
	return "SELECT asyncjobs.enqueue_sql('INSERT INTO effects VALUES (''$k'')')";
}

sub job_exists
{
	my ($id) = @_;
	return $node->safe_psql('postgres',
		"SELECT count(*) FROM asyncjobs.asyncoperation WHERE asyncoperationid = $id");
}

# plain ROLLBACK
my $rolled_back = $node->safe_psql('postgres',
	"BEGIN;\n" . enqueue_effect_sql('rolled_back') . ";\nROLLBACK;");
like($rolled_back, qr/^\d+$/, "enqueue returned id $rolled_back inside the transaction");

# ROLLBACK TO SAVEPOINT, then a second enqueue that commits
my $ids = $node->safe_psql(
	'postgres',
	"BEGIN;
	 SAVEPOINT s;\n"
	  . enqueue_effect_sql('savepoint_rolled_back') . ";
	 ROLLBACK TO SAVEPOINT s;\n"
	  . enqueue_effect_sql('savepoint_kept') . ";
	 COMMIT;");
my ($sp_rolled_back, $sp_kept) = split /\n/, $ids;
like($sp_kept, qr/^\d+$/, 'the enqueue after the savepoint returned an id');

# a transaction aborted by an error
my ($ret, $stdout, $stderr) = $node->psql(
	'postgres',
	"BEGIN;\n" . enqueue_effect_sql('errored') . ";\nSELECT 1 / 0;\nCOMMIT;",
	on_error_stop => 0);
my ($errored) = split /\n/, $stdout;
like($errored, qr/^\d+$/, 'enqueue ran in the transaction that then failed');
like($stderr, qr/division by zero/, 'the transaction failed');

# The committed job runs; with the workers having had several polls to
# find anything else, nothing else ran.
is($node->wait_for_job('postgres', $sp_kept), 30, 'the committed job ran');
usleep(1_000_000);    # five poll intervals
is(job_exists($rolled_back),    '0', 'no job after ROLLBACK');
is(job_exists($sp_rolled_back), '0', 'no job after ROLLBACK TO SAVEPOINT');
is(job_exists($errored),        '0', 'no job after an error');
is( $node->safe_psql('postgres', 'SELECT string_agg(k, \',\' ORDER BY k) FROM effects'),
	'savepoint_kept',
	'only the committed job had an effect');
is($node->safe_psql('postgres', 'SELECT count(*) FROM asyncjobs.asyncoperation'),
	'1', 'asyncoperation holds only the committed job');

# An open transaction's job is invisible to the workers until it commits.
my $session = $node->background_psql('postgres');
$session->query_safe('BEGIN');
my $open = $session->query_safe(enqueue_effect_sql('open'));
like($open, qr/^\d+$/, "job $open enqueued in an open transaction");
usleep(1_000_000);
is(job_exists($open), '0', 'other sessions do not see it before the commit');
is($node->safe_psql('postgres', "SELECT count(*) FROM effects WHERE k = 'open'"),
	'0', 'and it has not run');
$session->query_safe('COMMIT');
$session->quit;
is($node->wait_for_job('postgres', $open), 30, 'it runs once committed');
is($node->safe_psql('postgres', "SELECT count(*) FROM effects WHERE k = 'open'"),
	'1', 'exactly once');

$node->stop;
done_testing();
