# Copyright (c) 2026, the asyncjobs authors
#
# The trace log's levels (asyncjobs.trace_level, a server setting the
# workers follow after a reload): exception keeps the lines of failed
# attempts only, all keeps every attempt's, off keeps none.  A job retried
# after transient errors has one row per attempt.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";

use AsyncJobsNode;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = AsyncJobsNode->new_node('trace', max_workers => 1);

$node->safe_psql(
	'postgres', q{
	CREATE TABLE tries (n int);
	-- traces a line; fails with a transient error while data->'fail_first'
	-- attempts have not been made yet, or for good if data->'fail'
	CREATE FUNCTION traced(data jsonb) RETURNS text
	LANGUAGE plpgsql AS $$
	DECLARE
		attempt int := (SELECT retrycount + 1 FROM asyncjobs.asyncoperation
		                 WHERE asyncoperationid = asyncjobs.current_job());
	BEGIN
		PERFORM asyncjobs.trace(format('attempt %s', attempt));
		IF attempt <= coalesce((data->>'fail_first')::int, 0) THEN
			RAISE EXCEPTION 'busy, attempt %', attempt USING ERRCODE = 'AJ001';
		END IF;
		IF (data->>'fail')::boolean THEN
			RAISE EXCEPTION 'broken' USING ERRCODE = 'data_exception';
		END IF;
		RETURN 'done';
	END
	$$;
	SELECT asyncjobs.register_operation('traced', 'traced(jsonb)', max_retries => 5,
	                                    retry_delay => '50 milliseconds');
});

# Enqueues a job, waits for it, returns (statuscode, number of trace rows).
sub run_job
{
	my ($data) = @_;
	my $id = $node->safe_psql('postgres',
		"SELECT asyncjobs.enqueue('traced', '$data')");
	my $status = $node->wait_for_job('postgres', $id, 15) // 'none';
	my $rows = $node->safe_psql('postgres',
		"SELECT count(*) FROM asyncjobs.plugintracelog WHERE asyncoperationid = $id");
	return ($id, $status, $rows);
}

# After a reload, runs probe jobs until one shows the new level.
sub switch_level
{
	my ($level, $probe, $want_rows) = @_;
	$node->safe_psql('postgres',
		"ALTER SYSTEM SET asyncjobs.trace_level = '$level'; SELECT pg_reload_conf();");
	for (1 .. 20)
	{
		my (undef, undef, $rows) = run_job($probe);
		return 1 if $rows eq $want_rows;
		select(undef, undef, undef, 0.2);
	}
	return 0;
}

# exception (the default)
my ($id, $status, $rows) = run_job('{}');
is($status, '30', 'exception level: a job that succeeds ...');
is($rows, '0', '... leaves no trace');
($id, $status, $rows) = run_job('{"fail_first": 2}');
is($status, '30', 'exception level: a job that failed twice, then succeeded ...');
is($rows, '2', '... has a row for each failed attempt');
is( $node->safe_psql(
		'postgres', qq{
		SELECT string_agg(messageblock || '|' || (exceptiondetails LIKE 'ERROR:  busy%'), ','
		                  ORDER BY plugintracelogid)
		  FROM asyncjobs.plugintracelog WHERE asyncoperationid = $id}),
	"attempt 1\n|true,attempt 2\n|true",
	'with its lines and its exception');

# all
ok(switch_level('all', '{}', '1'), 'the workers follow trace_level = all');
($id, $status, $rows) = run_job('{"fail_first": 1}');
is($rows, '2', 'all level: one row per attempt, failed or not');
is( $node->safe_psql(
		'postgres', qq{
		SELECT string_agg(messageblock || '|' || (exceptiondetails IS NULL), ','
		                  ORDER BY plugintracelogid)
		  FROM asyncjobs.plugintracelog WHERE asyncoperationid = $id}),
	"attempt 1\n|false,attempt 2\n|true",
	'the succeeded attempt has lines and no exception');

# off
ok(switch_level('off', '{"fail": true}', '0'), 'the workers follow trace_level = off');
($id, $status, $rows) = run_job('{"fail": true}');
is($status, '31', 'off level: a job fails ...');
is($rows, '0', '... and leaves no trace');

$node->stop;
done_testing();
