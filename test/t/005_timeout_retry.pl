# Copyright (c) 2026, the asyncjobs authors
#
# Timeout -> retry -> Failed (DESIGN section 6).  An operation with a
# 300 ms timeout, 100 ms retry delay and 2 retries whose handler sleeps 5 s:
# each attempt is canceled by the timeout (57014, transient), the job waits
# Suspended / Retrying with postponeuntil set, and after the third attempt
# it ends Failed with retrycount 2 and three attempts on record.

use strict;
use warnings;

# test/perl is found without prove -I (PGXS drops a PROVE_FLAGS set before
# it is included)
use FindBin;
use lib "$FindBin::RealBin/../perl";

use AsyncJobsNode;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = AsyncJobsNode->new_node('timeout', max_workers => 2);

$node->safe_psql(
	'postgres', q{
	CREATE FUNCTION slow(data jsonb) RETURNS void
	LANGUAGE sql AS 'SELECT pg_sleep(5)';
	SELECT asyncjobs.register_operation('slow', 'slow(jsonb)',
		max_retries => 2, retry_delay => '100 ms', timeout => '300 ms');

	-- Watches a job from inside the server, every 10 ms, and returns the
	-- distinct states it went through (a psql loop would be too slow to
	-- catch a 100 ms Retrying window reliably).
	CREATE FUNCTION watch(job bigint, max_seconds float8) RETURNS jsonb
	LANGUAGE plpgsql AS $$
	DECLARE
		seen  jsonb := '[]';
		last  jsonb;
		cur   jsonb;
		stop  timestamptz := clock_timestamp() + make_interval(secs => max_seconds);
	BEGIN
		LOOP
			SELECT jsonb_build_object(
			           'statecode', statecode, 'statuscode', statuscode,
			           'retrycount', retrycount,
			           'postponed', postponeuntil IS NOT NULL,
			           'postponed_ahead', postponeuntil > modifiedon)
			  INTO cur
			  FROM asyncjobs.asyncoperation WHERE asyncoperationid = job;
			IF cur IS DISTINCT FROM last THEN
				seen := seen || jsonb_build_array(cur);
				last := cur;
			END IF;
			EXIT WHEN (cur->>'statecode')::int = 3
			       OR clock_timestamp() > stop;
			PERFORM pg_sleep(0.01);
		END LOOP;
		RETURN seen;
	END
	$$;
});

my $job = $node->safe_psql('postgres', q{SELECT asyncjobs.enqueue('slow')});
like($job, qr/^\d+$/, 'job enqueued');

my $seen = $node->json_query('postgres', "SELECT watch($job, 20)");
note('states seen: '
	  . join(' ',
		map { "$_->{statecode}/$_->{statuscode}/r$_->{retrycount}" } @$seen));

ok((grep { $_->{statecode} == 2 && $_->{statuscode} == 20 } @$seen),
	'the job was seen InProgress');
my @retrying = grep { $_->{statecode} == 1 && $_->{statuscode} == 11 } @$seen;
ok(scalar @retrying, 'the job was seen Suspended / Retrying');
ok((grep { $_->{retrycount} >= 1 && $_->{postponed} } @retrying),
	'while Retrying it had retrycount >= 1 and postponeuntil set');
ok((grep { $_->{postponed_ahead} } @retrying),
	'postponeuntil lay after the failure');
is($seen->[-1]{statecode}, 3, 'the watch ended with the job Completed');

is($node->wait_for_job('postgres', $job, 10), 31, 'the job ended Failed');
my $j = $node->job('postgres', $job);
is($j->{statecode},  3,       'statecode 3');
is($j->{errorcode},  '57014', 'errorcode is 57014 (query_canceled)');
is($j->{retrycount}, 2,       'retrycount is 2 (the max_retries)');
is($j->{maxretries}, 2,       'maxretries comes from the operation');
like($j->{message}, qr/statement timeout/, 'message says statement timeout');
ok($j->{executiontimespan} >= 0.25 && $j->{executiontimespan} < 4,
	"the last attempt was cut at the timeout ($j->{executiontimespan} s)");

my @attempts = @{ $j->{attempts} };
is(scalar @attempts, 3, 'attempts holds 3 entries');
is_deeply([ map { $_->{errorcode} } @attempts ],
	[ '57014', '57014', '57014' ], 'each attempt failed with 57014');
is_deeply([ map { $_->{outcome} } @attempts ],
	[ 'retry', 'retry', 'failed' ], 'two retries, then failed');
is_deeply([ map { $_->{attempt} } @attempts ], [ 1, 2, 3 ],
	'attempts are numbered 1, 2, 3');

# The backoff: attempt n+1 starts at least retry_delay * 2^(n-1) minus the
# 10 % jitter after attempt n ended; and each attempt lasted about the
# timeout, not the 5 s sleep.
my $timing = $node->safe_psql(
	'postgres', qq{
	SELECT string_agg(duration_ms || ':' || coalesce(gap_ms::text, '-'),
	                  ' ' ORDER BY n)
	  FROM (SELECT n,
	               round(extract(epoch FROM ended - started) * 1000) AS duration_ms,
	               round(extract(epoch FROM lead(started) OVER (ORDER BY n) - ended)
	                     * 1000) AS gap_ms
	          FROM (SELECT n, (a->>'started')::timestamptz AS started,
	                       (a->>'ended')::timestamptz AS ended
	                  FROM asyncjobs.asyncoperation o,
	                       jsonb_array_elements(o.attempts)
	                         WITH ORDINALITY AS x(a, n)
	                 WHERE o.asyncoperationid = $job) t) u});
note("attempt duration:gap to next (ms): $timing");
my @pairs = map { [ split /:/ ] } split / /, $timing;
is(scalar @pairs, 3, 'three attempt timings');
for my $i (0 .. 2)
{
	cmp_ok($pairs[$i][0], '>=', 250,  "attempt " . ($i + 1) . " ran until the timeout");
	cmp_ok($pairs[$i][0], '<',  2000, "attempt " . ($i + 1) . " was cut short");
}
cmp_ok($pairs[0][1], '>=', 90,  'the first retry waited at least the retry delay');
cmp_ok($pairs[1][1], '>=', 180, 'the second retry waited about twice as long');

# The worker that ran it is healthy: the next job runs normally.
$node->safe_psql('postgres',
	q{SELECT asyncjobs.register_operation('slow', 'slow(jsonb)',
		max_retries => 2, retry_delay => '100 ms', timeout => '10 s')});
my $ok_job = $node->safe_psql('postgres',
	q{SELECT asyncjobs.enqueue_sql('SELECT pg_sleep(0.1)')});
is($node->wait_for_job('postgres', $ok_job), 30,
	'a job after the timeouts succeeds (no stray cancel)');

$node->stop;
done_testing();
