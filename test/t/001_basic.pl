# Copyright (c) 2026, the asyncjobs authors
#
# Smoke test: the launcher and the worker pool come up, a SQL job and a
# handler job run to Succeeded with their results, and wait() sees them.

use strict;
use warnings;

# test/perl is found without prove -I (PGXS drops a PROVE_FLAGS set before
# it is included)
use FindBin;
use lib "$FindBin::RealBin/../perl";

use AsyncJobsNode;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = AsyncJobsNode->new_node('basic', max_workers => 2);

is( $node->safe_psql(
		'postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'asyncjobs launcher'"
	),
	'1',
	'one launcher runs');
is( $node->safe_psql(
		'postgres',
		"SELECT count(*) FROM pg_stat_activity
		  WHERE backend_type = 'asyncjobs worker' AND datname = 'postgres'"),
	'2',
	'the database has asyncjobs.max_workers workers in pg_stat_activity');
is($node->worker_count('postgres'), '2', 'asyncjobs.workers lists both');

$node->safe_psql(
	'postgres', q{
	CREATE TABLE effects (k text PRIMARY KEY, job bigint, ran_by text);
	CREATE FUNCTION double_it(data jsonb) RETURNS jsonb
	LANGUAGE plpgsql AS $$
	BEGIN
		INSERT INTO effects VALUES ('handler', asyncjobs.current_job(), current_user);
		RETURN jsonb_build_object('doubled', (data->>'n')::int * 2);
	END
	$$;
	SELECT asyncjobs.register_operation('double', 'double_it(jsonb)');
});

# a SQL job
my $sql_job = $node->safe_psql('postgres',
	q{SELECT asyncjobs.enqueue_sql(
		'INSERT INTO effects VALUES (''sql'', asyncjobs.current_job(), current_user)')});
like($sql_job, qr/^\d+$/, 'enqueue_sql returns a job id');
is($node->safe_psql('postgres', "SELECT asyncjobs.wait($sql_job, '10 s')"),
	'30', 'wait() returns Succeeded for the SQL job');

my $j = $node->job('postgres', $sql_job);
is($j->{statecode},     3,  'SQL job is Completed');
is($j->{statuscode},    30, 'SQL job is Succeeded');
is($j->{operationtype}, 54, 'SQL job has operationtype 54');
is($j->{messagename},   'sql', 'SQL job has messagename sql');
is_deeply($j->{result}, { rows => 1 }, 'SQL job result counts the rows');
is($j->{retrycount}, 0, 'SQL job made no retry');
ok(defined $j->{startedon} && defined $j->{completedon},
	'SQL job has startedon and completedon');
is(scalar @{ $j->{attempts} }, 1, 'one attempt recorded');
is($j->{attempts}[0]{outcome}, 'succeeded', 'the attempt succeeded');
like($j->{hostid}, qr/^\d+\@postgres$/, 'hostid names the worker pid@database');
is( $node->safe_psql('postgres', "SELECT job FROM effects WHERE k = 'sql'"),
	$sql_job, 'current_job() inside the job returns its id');

# a handler job with a result
my $h_job = $node->safe_psql('postgres',
	q{SELECT asyncjobs.enqueue('double', '{"n": 21}')});
is($node->wait_for_job('postgres', $h_job), 30, 'handler job succeeded');
$j = $node->job('postgres', $h_job);
is_deeply($j->{result}, { doubled => 42 }, 'handler result is stored');
is($j->{operationtype}, 1,        'handler job has operationtype 1');
is($j->{messagename},   'double', 'handler job has its operation name');
is($j->{name}, 'double', 'name defaults to the operation name');
is($node->safe_psql('postgres', "SELECT job FROM effects WHERE k = 'handler'"),
	$h_job, 'handler ran once with its job id');

is( $node->safe_psql(
		'postgres',
		"SELECT count(*) FROM asyncjobs.asyncoperation WHERE statecode = 3 AND statuscode = 31"
	),
	'0',
	"the seed's failed-jobs query works and finds nothing");

is($node->safe_psql('postgres', 'SELECT asyncjobs.current_job() IS NULL'),
	't', 'current_job() is NULL outside a job');

$node->stop;
done_testing();
